"""The gateway's own tokenization for gRPC workers (which run raw inference only): a model's
Hugging Face tokenizer directory loaded, its chat template rendered, token ids turned back into
text incrementally, stop strings matched on that text. Sans-IO: bytes, strings and ids in and out."""
