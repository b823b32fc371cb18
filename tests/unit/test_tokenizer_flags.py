"""--model-path, --tokenizer-path and --disable-tokenizer-autoload: which tokenizer
cache_aware uses, and the one-line refusals (smg downloads nothing, so a hub id is refused)."""

from __future__ import annotations

from pathlib import Path

import pytest

from smg.config import GatewayConfig
from smg.settings import ConfigError


def model_dir(root: Path, words: list[str]) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    root.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # type: ignore[assignment]
    tok.save(str(root / "tokenizer.json"))
    return root


def test_the_model_directory_s_tokenizer_puts_cache_aware_in_token_mode(tmp_path: Path) -> None:
    model = model_dir(tmp_path / "model", ["hello", "world"])
    tokenize = GatewayConfig(model_path=str(model)).policy_config().tokenize
    assert tokenize is not None and tokenize("hello world") == (1, 2)


def test_tokenizer_path_wins_and_autoload_can_be_turned_off(tmp_path: Path) -> None:
    model = model_dir(tmp_path / "model", ["hello", "world"])
    other = model_dir(tmp_path / "other", ["world", "hello"])
    tokenize = GatewayConfig(model_path=str(model), tokenizer_path=str(other)).policy_config().tokenize
    assert tokenize is not None and tokenize("hello world") == (2, 1)
    assert GatewayConfig(model_path=str(model), disable_tokenizer_autoload=True).policy_config().tokenize is None
    assert GatewayConfig().policy_config().tokenize is None


def test_a_hub_id_or_a_directory_without_a_tokenizer_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--model-path: Qwen/Qwen3-8B is not a local directory; smg downloads"):
        GatewayConfig(model_path="Qwen/Qwen3-8B")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"^--model-path: no tokenizer\.json at "):
        GatewayConfig(model_path=str(tmp_path / "empty"))
    GatewayConfig(model_path=str(tmp_path / "empty"), disable_tokenizer_autoload=True)  # pure load balancing
