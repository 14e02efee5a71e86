"""Model loading, chat formatting and layer access."""

from scans.models.chat import CHAT_FORMATS, ChatFormat, Encoded, PrefilledFormat, encode, make_chat_format
from scans.models.loading import LoadedModel, decoder_layers, load_model, prepare_tokenizer

__all__ = [
    "CHAT_FORMATS",
    "ChatFormat",
    "Encoded",
    "LoadedModel",
    "PrefilledFormat",
    "decoder_layers",
    "encode",
    "load_model",
    "make_chat_format",
    "prepare_tokenizer",
]
