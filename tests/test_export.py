"""Exporting a model with the tuned presets it brings; nothing existing is replaced by surprise."""
import pytest

from scoreinv.errors import ScoreinvError
from scoreinv.export import export
from scoreinv.sampling import settings as S


def test_export_ships_presets_and_refuses_to_overwrite(tiny_checkpoint, tmp_path):
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    S.write_preset(tuned / "ct-dds.yaml", S.Preset("dds", "ct", {"steps": 20, "eta": 0.5}, {"trials": 4}))
    dest = tmp_path / "models"
    path = export(tiny_checkpoint, "tiny", dest=str(dest), presets=str(tuned))
    assert path == dest / "tiny.pt" and path.exists()
    copied = dest / "presets" / "tiny" / "ct-dds.yaml"
    assert copied.read_text() == (tuned / "ct-dds.yaml").read_text()
    with pytest.raises(ScoreinvError, match="exists; pass --overwrite"):
        export(tiny_checkpoint, "tiny", dest=str(dest))
    assert export(tiny_checkpoint, "tiny", dest=str(dest), overwrite=True) == path
    # a preset whose content does not match its name is refused before anything is written
    S.write_preset(tuned / "mri-dds.yaml", S.Preset("dds", "ct", {"steps": 20}))
    with pytest.raises(ScoreinvError, match="tuned for task 'ct', not 'mri'"):
        export(tiny_checkpoint, "other", dest=str(dest), presets=str(tuned))
    assert not (dest / "other.pt").exists()


def test_export_onto_the_file_it_reads_is_refused(tiny_checkpoint, tmp_path):
    """The source named as a work directory (or a shipped name) is the file it resolves to: never
    the output, even with overwrite."""
    meta = f"{tiny_checkpoint}/checkpoints-meta"
    before = open(f"{meta}/checkpoint.pt", "rb").read()
    with pytest.raises(ScoreinvError, match="is the input file"):
        export(tiny_checkpoint, "checkpoint", dest=meta, overwrite=True)
    assert open(f"{meta}/checkpoint.pt", "rb").read() == before
