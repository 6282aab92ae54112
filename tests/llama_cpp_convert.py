"""llama.cpp's own converter (convert_hf_to_gguf.py), run on a test model folder.

Usage: python llama_cpp_convert.py CONVERTER MODEL_DIR --outfile X.gguf --outtype f32

The converter names a BPE tokenizer's pre-tokenizer by hashing how it splits a probe text, and refuses
hashes it does not list; the test tokenizers here are our own, so their hash is unknown. The tag only
chooses llama.cpp's text pre-tokenizer: the tests feed token ids, never text, so any tag serves, and the
weights, shapes and hyperparameters go through the converter unchanged.
"""

import runpy
import sys
from pathlib import Path

converter = Path(sys.argv[1])
sys.path.insert(0, str(converter.parent))
from conversion.base import TextModel  # noqa: E402  (importable once the converter's folder is on the path)

TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
sys.argv = [str(converter), *sys.argv[2:]]
runpy.run_path(str(converter), run_name="__main__")
