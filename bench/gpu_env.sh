# Sourced at the start of every command on a lent GPU machine (the `device` tool): installs the
# few packages its image lacks from wheels carried in .whl/ (no network there), points the data
# at the copy carried in .gpu/data, and prints what the machine has.
#   pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d .whl \
#       datasets evaluate dill multiprocess jsonargparse docstring-parser typeshed-client fsspec pyarrow
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD WANDB_MODE=disabled PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export DATA=.gpu/data/multi30k
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, lightning, datasets, evaluate, tokenizers, sacrebleu, transformers, pyarrow; \
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'lightning', lightning.__version__, \
'datasets', datasets.__version__, 'tokenizers', tokenizers.__version__, 'transformers', transformers.__version__, \
'pyarrow', pyarrow.__version__)"
