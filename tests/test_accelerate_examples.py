"""The example accelerate configs under examples/accelerate/ parse, and accelerate's launcher turns them into the
FSDP / DeepSpeed settings they claim (read through accelerate's own launch code; no GPU needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "accelerate"


def _launch_args(config: Path):
    launch = pytest.importorskip("accelerate.commands.launch")
    args = launch.launch_command_parser().parse_args(["--config_file", str(config), "-m", "llmkit", "finetune", "x"])
    args, defaults, mixed_precision_from_config = launch._validate_launch_command(args)
    return args, defaults, mixed_precision_from_config


def test_fsdp_example_is_fsdp2_with_a_full_state_dict() -> None:
    from accelerate.utils import prepare_multi_gpu_env

    args, _, _ = _launch_args(EXAMPLES / "fsdp.yaml")
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true"
    assert env["FSDP_VERSION"] == "2"
    # llmkit's output folder must be one loadable model, so the final save gathers the full state dict.
    assert env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"


def test_deepspeed_example_leaves_accumulation_and_clipping_to_the_trainer() -> None:
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args, defaults, mixed_precision_from_config = _launch_args(EXAMPLES / "deepspeed.yaml")
    fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mixed_precision_from_config else [])
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)  # as `accelerate launch` sets it
    _, env = prepare_deepspeed_cmd_env(args)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"
    # Unset here, so accelerate's DeepSpeedPlugin uses "auto" and the Trainer fills in llmkit's values.
    assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in env
    assert "ACCELERATE_GRADIENT_CLIPPING" not in env
