"""The real-data recipes, offline: each preparation recipe runs end to end against small local archives in the
real formats (served through its mirror variables as file:// URLs), is restartable after an interruption, never uses
a download with a wrong checksum; each training recipe runs at SIZE=tiny and writes its row of results.md."""

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env
from tests.recipes import fixtures

RECIPES = REPO / "recipes"
TRANSLATION = {  # recipe -> (fixture builder, source, target, training pairs after cleaning, valid, test)
    "iwslt17_de_en": (fixtures.iwslt, "de", "en", 300, 140, 20),
    "wmt16_ro_en": (fixtures.wmt16, "ro", "en", 200, 20, 20),
    "wmt14_en_de": (fixtures.wmt14, "en", "de", 270, 20, 20),
}


def recipe(script, *args, env=None, check=True):
    full_env = cli_env({"VOCAB": "60", "WORKERS": "1", **(env or {})})
    result = subprocess.run(["bash", str(RECIPES / script), *map(str, args)], capture_output=True, text=True,
                            env=full_env, timeout=600)
    if check and result.returncode:
        pytest.fail(f"{script} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def sentences_in(data_bin: Path, split: str, lang: str, pair: str) -> list:
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(str(data_bin / f"dict.{lang}.txt"))
    data = data_utils.load_indexed_dataset(str(data_bin / f"{split}.{pair}.{lang}"), dictionary)
    return [dictionary.string(data[i]) for i in range(len(data))]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    return tmp_path_factory.mktemp("mirror")


@pytest.fixture(scope="module")
def prepared(mirror, tmp_path_factory):
    """Every translation data set prepared once from the fixtures: name -> data folder."""
    out = {}
    for name, (build, *_) in TRANSLATION.items():
        work = tmp_path_factory.mktemp(name)
        recipe(f"prepare_{name}.sh", env={**build(mirror / name), "WORK": str(work)})
        out[name] = work
    return out


@pytest.mark.parametrize("name", list(TRANSLATION))
def test_translation_data_is_cleaned_encoded_and_binarised(prepared, name):
    _, src, tgt, train, valid, test = TRANSLATION[name]
    data = prepared[name]
    pair = f"{src}-{tgt}"
    clean = {lang: (data / "clean" / f"train.{lang}").read_text().splitlines() for lang in (src, tgt)}
    assert 0 < len(clean[src]) <= train == len((data / "raw" / f"train.{src}").read_text().splitlines())
    for s, t in zip(clean[src], clean[tgt]):  # Moses' clean-corpus rule: lengths within a ratio of 1.5
        longer, shorter = max(len(s.split()), len(t.split())), min(len(s.split()), len(t.split()))
        assert 0 < shorter and (longer <= 10 or longer <= 1.5 * shorter)
    for split, count in (("train", len(clean[src])), ("valid", valid), ("test", test)):
        for lang in (src, tgt):
            lines = sentences_in(data / "bin", split, lang, pair)
            assert len(lines) == count and all(lines)
            assert not any(line.lstrip("\u2581").startswith("<") for line in lines)  # no tags or markup left
    assert (data / "bin/dict.de.txt").read_text() == (data / "bin/dict.en.txt").read_text() if name != "wmt16_ro_en" \
        else (data / "bin/dict.ro.txt").read_text() == (data / "bin/dict.en.txt").read_text()  # joint vocabulary
    assert "\u2581" in (data / "spm" / f"test.{tgt}").read_text()  # sentencepiece pieces
    raw_test = (data / "clean" / f"test.{tgt}").read_text().splitlines()
    assert len(raw_test) == test and "&amp;" not in "".join(raw_test)


@pytest.mark.parametrize("dataset", ["enwik8", "text8"])
def test_character_data_keeps_every_character(mirror, tmp_path, dataset):
    env = getattr(fixtures, dataset)(mirror / dataset)
    if dataset == "enwik8":
        env["CHECKSUM"] = "sha256:" + env.pop("_sha256")  # the published checksum is the real file's
    recipe("prepare_char_lm.sh", dataset, env={**env, "WORK": str(tmp_path)})
    from fairseq.data import Dictionary, data_utils

    import zipfile
    with zipfile.ZipFile(mirror / dataset / "dc" / f"{dataset}.zip") as zf:
        content = zf.read(dataset)
    dictionary = Dictionary.load(str(tmp_path / "bin/dict.txt"))
    tokens = 0
    for split in ("train", "valid", "test"):
        data = data_utils.load_indexed_dataset(str(tmp_path / "bin" / split), dictionary)
        tokens += sum(len(data[i]) for i in range(len(data)))
        assert dictionary.unk() not in {int(t) for i in range(len(data)) for t in data[i]}
    # one token per byte (enwik8) or character (text8: a space is "_" or a line end); each split's last line adds
    # an end-of-line token unless the split ended with a newline
    assert len(content) <= tokens <= len(content) + 3
    valid = (tmp_path / "text/valid.txt").read_text()
    assert ("_" in valid) if dataset == "text8" else valid.split()[0].isdigit()


def test_gold_alignments_are_converted_from_latin1(mirror, tmp_path):
    recipe("prepare_rwth_alignments.sh", env={**fixtures.rwth(mirror / "rwth"), "WORK": str(tmp_path)})
    from sparse_attn_fairseq.analyze.alignment import read_gold

    german = (tmp_path / "rwth.de").read_text(encoding="utf-8").splitlines()
    assert len(german) == 12 and any(c in "".join(german) for c in "äü")
    gold = read_gold(str(tmp_path / "rwth.talp"), "talp")
    assert len(gold) == 12 and all(g.sure <= g.possible and g.possible for g in gold)


def test_an_interrupted_recipe_skips_finished_steps(mirror, tmp_path):
    env = {**fixtures.wmt16(mirror / "interrupted"), "WORK": str(tmp_path / "data")}
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "fairseq-preprocess").write_text("#!/bin/sh\necho 'killed'; exit 137\n")
    (fake / "fairseq-preprocess").chmod(0o755)
    broken = recipe("prepare_wmt16_ro_en.sh", env={**env, "PATH": f"{fake}{os.pathsep}{cli_env()['PATH']}"},
                    check=False)
    assert broken.returncode != 0 and "FAILED binarize" in broken.stdout
    resumed = recipe("prepare_wmt16_ro_en.sh", env=env)
    assert "skip  download-europarl" in resumed.stdout and "skip  spm-train" in resumed.stdout
    assert "start binarize" in resumed.stdout and (tmp_path / "data/bin/train.ro-en.ro.bin").exists()


def test_a_corrupt_download_is_deleted_and_fetched_again(mirror, tmp_path):
    env = {**fixtures.iwslt(mirror / "corrupt"), "WORK": str(tmp_path)}
    (tmp_path / "download").mkdir(parents=True)
    (tmp_path / "download/test-de-en.tgz").write_bytes(b"truncated garbage")  # a bad earlier download
    result = recipe("prepare_iwslt17_de_en.sh", env=env)
    log = (tmp_path / "logs/download-test.log").read_text()
    assert "checksum mismatch" in log and "deleted, fetching again" in log and "verified test-de-en.tgz" in log
    assert "done" in result.stdout


def test_a_mirror_serving_other_bytes_is_refused(mirror, tmp_path):
    env = {**fixtures.iwslt(mirror / "wrong"), "WORK": str(tmp_path), "TEST_MD5": "md5:" + "0" * 32}
    result = recipe("prepare_iwslt17_de_en.sh", env=env, check=False)
    assert result.returncode != 0 and "FAILED download-test" in result.stdout
    assert "does not match md5:000" in (tmp_path / "logs/download-test.log").read_text()
    assert not (tmp_path / "download/test-de-en.tgz").exists()  # never left to be used


def test_a_recorded_checksum_guards_later_copies(mirror, tmp_path):
    env = {**fixtures.text8(mirror / "tofu"), "WORK": str(tmp_path)}
    recipe("prepare_char_lm.sh", "text8", env=env)
    assert "text8.zip" in (tmp_path / "CHECKSUMS").read_text()
    (tmp_path / "download/text8.zip").write_bytes(b"tampered")
    (tmp_path / ".done/download").unlink()
    recipe("prepare_char_lm.sh", "text8", env=env)  # the tampered copy is replaced by a fresh, matching one
    assert "checksum mismatch" in (tmp_path / "logs/download.log").read_text()


@pytest.mark.parametrize("arch", ["transformer", "entmax", "rela", "adaptive_span"])
def test_tiny_translation_runs_write_their_row(prepared, mirror, tmp_path, arch):
    rwth = tmp_path / "rwth"
    recipe("prepare_rwth_alignments.sh", env={**fixtures.rwth(mirror / f"rwth-{arch}"), "WORK": str(rwth)})
    results = tmp_path / "results.md"
    recipe("train_translation.sh", "iwslt17_de_en", arch, env={
        "SIZE": "tiny", "DATA": str(prepared["iwslt17_de_en"]), "WORK": str(tmp_path / "run"), "RWTH": str(rwth),
        "RESULTS": str(results)})
    rows = results.read_text().splitlines()
    assert len(rows) == 3 and f"| iwslt17_de_en | {arch} |" in rows[2]
    assert re.search(r"sacreBLEU [\d.]+, tok [\d.]+, AER 0\.\d+", rows[2]) and "nrefs:1" in rows[2]
    assert len(list((tmp_path / "run").glob("averaged.pt"))) == 1


def test_tiny_character_lm_run_writes_its_row(mirror, tmp_path):
    recipe("prepare_char_lm.sh", "text8", env={**fixtures.text8(mirror / "lm"), "WORK": str(tmp_path / "data")})
    results = tmp_path / "results.md"
    recipe("train_char_lm.sh", "text8", "small", env={"SIZE": "tiny", "DATA": str(tmp_path / "data"),
                                                       "WORK": str(tmp_path / "run"), "RESULTS": str(results)})
    row = results.read_text().splitlines()[2]
    assert "| lm | text8 | small |" in row and "bpc" in row and "dev 1.05 / test 1.11" in row
