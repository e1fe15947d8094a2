"""`itwinai-hpc train --set KEY=VALUE`: what a sweep's ${matrix.KEY} feeds into the config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.ml.config import TrainConfig, load_config

CONFIG = Path(__file__).resolve().parents[2] / "use-cases/mnist/mnist-ai-train.yml"


def test_overrides_replace_the_files_values_with_yaml_typed_ones():
    config = load_config(TrainConfig, CONFIG, ["trainer.max_lr=0.020", "trainer.batch_size=64",
                                               "trainer.precision=bf16"])
    assert (config.trainer.max_lr, config.trainer.batch_size, config.trainer.precision) == \
        (0.02, 64, "bf16")
    assert load_config(TrainConfig, CONFIG).trainer.max_lr == 0.01      # the file as written


@pytest.mark.parametrize("item, message", [
    ("trainer.max_lr=abc",
     "--set trainer.max_lr=abc: trainer.max_lr: Input should be a valid number"),
    ("trainer.bacth_size=64", "unknown key 'bacth_size'"),
    ("trainer.max_lr", "needs the form dotted.path=value"),
])
def test_a_bad_override_names_the_flag_and_the_key(item, message):
    with pytest.raises(UserError) as err:
        load_config(TrainConfig, CONFIG, [item])
    assert message in err.value.format()


def test_the_train_command_exits_2_on_a_bad_override_before_touching_data(tmp_path):
    p = subprocess.run([sys.executable, "-m", "itwinai_hpc.cli", "train", "--config", str(CONFIG),
                        "--data", str(tmp_path / "none"), "--set", "trainer.epochs=0"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "trainer.epochs" in p.stderr and "Traceback" not in p.stderr
