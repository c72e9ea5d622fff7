#!/usr/bin/env bash
# The GPU measurements still owed, as three device calls of under ten minutes each.
#
# Why a script: a session gets about 30 minutes of one GPU, machine start included, and the last two
# sessions got none; whoever gets one next should spend it measuring, not composing commands. Each
# phase installs the carried wheels, runs its steps in order of importance, each under its own
# `timeout` so one hang cannot eat the phase, and leaves a log per step under $OUT (the device tool
# brings $OUT back), plus $OUT/<phase>.summary with each step's exit code and seconds.
#
#   bash benchmarks/gpu_runbook.sh recon    # cold CLI, profile, clean regression, hash-grid kernel
#   bash benchmarks/gpu_runbook.sh robust   # robustness benchmark at standard quality, before/after
#   bash benchmarks/gpu_runbook.sh gen      # generation table, Triton norms, 6 GiB run, end to end
#
# Expects, as carried by the device tool: .whl/ (wheels missing on the GPU machine) and
# .device-carry/h8/data/objects/<name>/{views,mesh_normalized.ply} (the shared objects) and
# .device-carry/h8/reference/syncdreamer-golden-synthetic.{npz,json} (generation parity), copied from
# ../shared before the call: run(..., carry=[".whl", ".device-carry"]).
set -u
phase=${1:?usage: gpu_runbook.sh recon|robust|gen}
OUT=${OUT:?set OUT to the folder that comes back}
SHARED=.device-carry/h8
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >"$OUT/pip.log" 2>&1
export PYTHONPATH="/tmp/site:$PWD:$PWD/tests"
summary="$OUT/$phase.summary"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$summary" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >>"$summary" 2>&1

step() {  # step NAME SECONDS COMMAND...: run it, log it, note exit code and wall time
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "$name rc=$? s=$((SECONDS - t0))" >>"$summary"
}

cold_reconstruct() {  # one cold process, views -> GLB, with its own stage split and peak memory
    /usr/bin/time -v python3 -m cli reconstruct examples/spot -o "/tmp/cold-$1.glb" --quality "$1" --device cuda
}

case $phase in
recon)
    step cold-standard 120 cold_reconstruct standard
    step cold-draft 90 cold_reconstruct draft
    step cold-standard-2 120 cold_reconstruct standard  # second cold process: warm driver/disk caches
    step hash-grid-tests 120 python3 -m pytest -q -rs -p no:cacheprovider tests/test_triton_hash_grid.py
    step hash-grid-bench 90 python3 benchmarks/hash_grid.py --json "$OUT/hash_grid.json"
    step profile-standard 120 python3 benchmarks/recon_profile.py --quality standard --sync --profile 300:10 \
        --out "$OUT/profile"
    step clean-standard 240 python3 benchmarks/recon.py --shared "$SHARED" --quality standard \
        --out "$OUT/clean" --json "$OUT/clean.json"
    ;;
robust)
    # after = the presets as they are; before = the same with every robustness method off
    step robust-after 300 python3 benchmarks/robustness.py --quality standard --device cuda --jobs 4 --threads 4 \
        --shared "$SHARED" --objects spot duck cup blade --out "$OUT/rb-after"
    step robust-before 240 python3 benchmarks/robustness.py --quality standard --device cuda --jobs 4 --threads 4 \
        --shared "$SHARED" --objects spot duck cup blade --set appearance=none --set w_normal_smooth=0 \
        --set level_ramp=0 --set view_weight_power=0 --set mask_edge_px=0 --set texture_source=field \
        --out "$OUT/rb-before"
    ;;
gen)
    step triton-norm-tests 150 python3 -m pytest -q -rs -p no:cacheprovider tests/test_triton_norms.py \
        tests/test_fast_paths.py
    step norm-kernels 60 python3 benchmarks/norm_kernels.py --step --json "$OUT/norms.json"
    step generate 300 python3 benchmarks/generate.py --shared "$SHARED" --skip-compile --json "$OUT/generate.json"
    # end to end on the full-size synthetic checkpoint, views from the object-decoder double (the real
    # weights cannot be fetched there): the default, then the process capped at 6 GiB
    step inputs 120 python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import batch_engines as b; \
from pathlib import Path; b.make_photos(Path('/tmp/photos'), 1); b.make_checkpoint(Path('/tmp/ckpt'), False)"
    run=(python3 benchmarks/batch_engines.py --child local -- run /tmp/photos/photo-000.png
        --weights /tmp/ckpt/syncdreamer-synthetic-full.ckpt --preview gif)
    step e2e 120 /usr/bin/time -v "${run[@]}" -o "$OUT/e2e"
    step e2e-6gib 180 /usr/bin/time -v "${run[@]}" -o "$OUT/e2e-6gib" --gpu-memory 6
    ;;
*)
    echo "unknown phase $phase (recon | robust | gen)" >&2
    exit 2
    ;;
esac
cat "$summary"
