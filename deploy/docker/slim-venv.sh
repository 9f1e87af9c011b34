#!/bin/sh
# Cut from an installed virtual environment what no container of the cluster runs, then compile the bytecode
# of what they import. Run by the `build` stage of Dockerfile.cpu / Dockerfile.gpu:  sh slim-venv.sh /opt/venv
#
# Removed: pip, setuptools and wheel (images are rebuilt, never pip-installed into); triton; the test suites
# the dependencies ship (*/tests); C/C++ headers, Cython sources and CMake files (nothing compiles extensions
# at run time: sftl's models are TorchScript, never torch.compile); torch's C++ tests and test binaries
# (torch/test; torch/bin but torch_shm_manager, which torch.multiprocessing uses); Arrow Flight; every
# __pycache__ that pip or the build left.
# .pyc policy: bytecode only for the modules that `sftl`, `dask scheduler` and `dask worker` import (written by
# importing them once). The user the containers run as cannot write to /opt/venv, so without it every process
# would compile them again at each start; the modules no container imports (most of sympy, torch._inductor,
# pandas' I/O plugins, ...) stay source only.
set -eu
venv=$1
site=$(echo "$venv"/lib/python3*/site-packages)

# triton (GPU image, 0.6 GB): the kernel compiler of torch.compile / inductor, which sftl never calls; torch
# imports it only there.
"$venv/bin/python" -m pip uninstall -q -y triton 2>/dev/null || true
"$venv/bin/python" -m pip uninstall -q -y pip setuptools wheel 2>/dev/null || true
find "$site" -mindepth 2 -depth -type d -name tests -exec rm -rf {} +
find "$site" -type d -name __pycache__ -prune -exec rm -rf {} +
rm -rf "$site/torch/include" "$site/torch/share/cmake" "$site/torch/test" "$site/pyarrow/include" "$site/pyarrow/src"
# Arrow Flight (RPC): only `import pyarrow.flight` loads it; sftl reads and writes Parquet, never Flight.
# (Substrait stays: libarrow_dataset, which Parquet datasets use, links it.)
rm -f "$site"/pyarrow/libarrow_flight.so* "$site"/pyarrow/libarrow_python_flight.so* "$site"/pyarrow/_flight.*.so
find "$site/torch/bin" -mindepth 1 -maxdepth 1 ! -name torch_shm_manager -exec rm -rf {} +
find "$site" \( -name '*.pxd' -o -name '*.pyx' -o -name '*.pxi' -o -name '*.h' -o -name '*.hpp' \
    -o -name '*.cuh' -o -name '*.a' \) -type f -delete

# The .pyc of what the containers import (timestamp-checked: COPY --from keeps the sources' times).
PYTHONDONTWRITEBYTECODE= "$venv/bin/python" -c '
import sys
import distributed.cli.dask_scheduler, distributed.cli.dask_worker, distributed.http.scheduler.json
import sftl_dask.cli, sftl_dask.cluster, sftl_dask.ingest, sftl_dask.retrieve, sftl_dask.io.cube
import sftl_dask.io.lst, sftl_dask.models.retriever, sftl_dask.api, sftl_dask.validate, torch, lightgbm
import pyarrow.parquet, pyarrow.dataset
print("slim-venv:", len(sys.modules), "modules imported and compiled")
'
