"""Every case of the bad-input corpus (tests/bad_inputs.py) gets exactly its documented handling."""
import re
from pathlib import Path

import pytest

from bad_inputs import CORPUS
from msad_tf.data import CocoDataset, DatasetError

DOC = Path(__file__).resolve().parent.parent / "docs" / "DATA.md"
ISSUE_LIST = (
    "truncated JPEG", "PNG with alpha", "16-bit PNG", "CMYK JPEG", "1x1 image", "10000x10 image",
    "EXIF-rotated image", "boxes with negative size", "NaN coordinates", "duplicate image ids",
    "category ids not in the list", "empty annotation file", "missing image file",
)


@pytest.mark.parametrize("case", CORPUS, ids=lambda case: case.name)
def test_corpus_case(case, tmp_path):
    ann_file = case.build(tmp_path)
    if case.error:
        with pytest.raises(DatasetError, match=case.error):
            CocoDataset(ann_file, str(tmp_path))
        return
    data = CocoDataset(ann_file, str(tmp_path))
    assert dict(data.skipped) == case.skipped
    assert dict(data.flagged) == case.flagged
    assert dict(data.adjusted) == case.adjusted
    assert tuple(r.image_id for r in data.records) == case.kept
    summary = data.summary()
    assert summary["skipped"] == case.skipped and summary["images"] == len(case.kept)
    if case.check:
        case.check(data)


def test_corpus_covers_the_issue_list_and_the_docs_table():
    assert len(CORPUS) == 20
    assert {case.issue for case in CORPUS} >= set(ISSUE_LIST)
    assert len({case.name for case in CORPUS}) == len(CORPUS)
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \|[^|]*\| ([^|]+) \|", DOC.read_text(), re.M)}
    assert set(rows) == {case.name for case in CORPUS}
    for case in CORPUS:
        expected = "error" if case.error else "skip" if case.skipped else "works"
        assert rows[case.name].strip().startswith(expected), case.name
