"""The training CLI takes the reference app.main's spellings: --fname for --config, --devices for --device."""
import pytest

from engine.train import parse_args


def test_fname_and_devices_aliases():
    a = parse_args(["--fname", "configs/tiny_cpu.yaml", "--devices", "cpu"])
    assert a.config == "configs/tiny_cpu.yaml" and a.device == "cpu"
    assert parse_args(["--config", "x.yaml"]).device == "cpu"


def test_several_devices_say_to_use_a_launcher(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--fname", "x.yaml", "--devices", "cuda:0", "cuda:1"])
    assert e.value.code == 2
    assert "torchrun --nproc_per_node 2" in capsys.readouterr().err
