"""Small local archives in the real data sets' formats, laid out like their download mirrors, for the recipe tests.

Each builder writes under ``root`` the files the recipe downloads (through its mirror variables, as file:// URLs)
and returns the environment that points the recipe at them.
"""

import hashlib
import io
import random
import tarfile
import zipfile
from pathlib import Path

WORDS_DE = "der die das haus katze hund sieht gross klein und mit über schön grün ärger".split()
WORDS_EN = "the a house cat dog sees big small and with over nice green anger".split()
WORDS_RO = "casa pisica câine vede mare mic și cu peste frumos verde".split()


def sentences(words, count, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(count)]


def add_files(archive: Path, files: dict) -> None:
    """A .tgz or .zip holding ``files`` (name -> text or bytes)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    blobs = {name: data.encode("utf-8") if isinstance(data, str) else data for name, data in files.items()}
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for name, data in blobs.items():
                zf.writestr(name, data)
        return
    with tarfile.open(archive, "w:gz") as tf:
        for name, data in blobs.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def md5(path: Path) -> str:
    return "md5:" + hashlib.md5(path.read_bytes()).hexdigest()


def xml_doc(lines, lang, setname):
    segs = "\n".join(f'<seg id="{i + 1}"> {line} </seg>' for i, line in enumerate(lines))
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<mteval>\n<refset setid="{setname}" srclang="any" '
            f'trglang="{lang}">\n<doc docid="1" genre="lectures">\n<url>http://www.ted.com/talks/x</url>\n'
            f"<talkid>1</talkid>\n<title>A talk &amp; more</title>\n{segs}\n</doc>\n</refset>\n</mteval>\n")


def sgm_doc(lines, setid):
    segs = "\n".join(f'<seg id="{i + 1}">{line}</seg>' for i, line in enumerate(lines))
    return f'<srcset setid="{setid}" srclang="any">\n<doc docid="news-1" genre="news" origlang="en">\n{segs}\n</doc>\n</srcset>\n'


def iwslt(root: Path, train=300, evaluate=20) -> dict:
    de, en = sentences(WORDS_DE, train, 1), sentences(WORDS_EN, train, 2)
    tags = ["<url>http://www.ted.com/talks/a</url>", "<keywords>talks, science</keywords>", "<talkid>1</talkid>",
            "<title>A title</title>", "<description>TED talk</description>"]
    files = {"de-en/train.tags.de-en.de": "\n".join(tags + de) + "\n",
             "de-en/train.tags.de-en.en": "\n".join(tags + en) + "\n"}
    for k, setname in enumerate(["dev2010", "tst2010", "tst2011", "tst2012", "tst2013", "tst2014", "tst2015"]):
        for lang, words in (("de", WORDS_DE), ("en", WORDS_EN)):
            files[f"de-en/IWSLT17.TED.{setname}.de-en.{lang}.xml"] = xml_doc(
                sentences(words, evaluate, 10 + k), lang, setname)
    mirror = root / "wit3"
    add_files(mirror / "2017-01-trnted/texts/de/en/de-en.tgz", files)
    test = mirror / "2017-01-ted-test/texts/de/en/de-en.tgz"
    add_files(test, {"de-en/IWSLT17.TED.tst2017.de-en.de.xml": xml_doc(sentences(WORDS_DE, evaluate, 30), "de", "t")})
    add_files(mirror / "2017-01-ted-test/texts/en/de/en-de.tgz",
              {"en-de/IWSLT17.TED.tst2017.en-de.en.xml": xml_doc(sentences(WORDS_EN, evaluate, 31), "en", "t")})
    return {"IWSLT_MIRROR": f"file://{mirror}", "TEST_MD5": md5(test)}


def wmt16(root: Path, train=200, evaluate=20) -> dict:
    ro, en = sentences(WORDS_RO, train, 3), sentences(WORDS_EN, train, 4)
    add_files(root / "statmt/europarl/training-parallel-ep-v8.tgz", {
        "training-parallel-ep-v8/europarl-v8.ro-en.ro": "\n".join(ro[:100]) + "\n",
        "training-parallel-ep-v8/europarl-v8.ro-en.en": "\n".join(en[:100]) + "\n"})
    add_files(root / "opus/OPUS-SETIMES/v2/moses/en-ro.txt.zip", {
        "SETIMES.en-ro.ro": "\n".join(ro[100:]) + "\n", "SETIMES.en-ro.en": "\n".join(en[100:]) + "\n",
        "README": "SETIMES2"})
    dev, test = root / "statmt/wmt16/translation-task/dev.tgz", root / "statmt/wmt16/translation-task/test.tgz"
    add_files(dev, {"dev/newsdev2016-roen-src.ro.sgm": sgm_doc(sentences(WORDS_RO, evaluate, 5), "newsdev2016"),
                    "dev/newsdev2016-roen-ref.en.sgm": sgm_doc(sentences(WORDS_EN, evaluate, 6), "newsdev2016")})
    add_files(test, {"test/newstest2016-roen-src.ro.sgm": sgm_doc(sentences(WORDS_RO, evaluate, 7), "newstest2016"),
                     "test/newstest2016-roen-ref.en.sgm": sgm_doc(sentences(WORDS_EN, evaluate, 8), "newstest2016")})
    return {"STATMT_MIRROR": f"file://{root}/statmt", "OPUS_MIRROR": f"file://{root}/opus",
            "EUROPARL_URL": f"file://{root}/statmt/europarl/training-parallel-ep-v8.tgz", "DEV_MD5": md5(dev),
            "TEST_MD5": md5(test)}


def wmt14(root: Path, train=90, evaluate=20) -> dict:
    de, en = sentences(WORDS_DE, 3 * train, 11), sentences(WORDS_EN, 3 * train, 12)
    parts = {"training-parallel-europarl-v7.tgz": "training/europarl-v7.de-en",
             "training-parallel-commoncrawl.tgz": "commoncrawl.de-en",
             "training-parallel-nc-v9.tgz": "training/news-commentary-v9.de-en"}
    for i, (archive, stem) in enumerate(parts.items()):
        folder = "wmt13" if "nc-v9" not in archive else "wmt14"
        add_files(root / folder / archive, {f"{stem}.de": "\n".join(de[i * train:(i + 1) * train]) + "\n",
                                            f"{stem}.en": "\n".join(en[i * train:(i + 1) * train]) + "\n"})
    add_files(root / "wmt14/dev.tgz", {"dev/newstest2013.de": "\n".join(sentences(WORDS_DE, evaluate, 13)) + "\n",
                                       "dev/newstest2013.en": "\n".join(sentences(WORDS_EN, evaluate, 14)) + "\n"})
    test = root / "wmt14/test-full.tgz"
    add_files(test, {"test-full/newstest2014-deen-src.en.sgm": sgm_doc(sentences(WORDS_EN, evaluate, 15), "n14"),
                     "test-full/newstest2014-deen-ref.de.sgm": sgm_doc(sentences(WORDS_DE, evaluate, 16), "n14")})
    return {"STATMT_MIRROR": f"file://{root}/wmt13", "WMT14_MIRROR": f"file://{root}/wmt14", "TEST_MD5": md5(test)}


def enwik8(root: Path, size=20000) -> dict:
    rng = random.Random(5)
    text = "".join(rng.choice(["<page>", "</page>\n", " the ", "wiki", "\n", "é", "[[link]]", "x"]) for _ in
                   range(size // 4)).encode("utf-8")[:size]
    archive = root / "dc/enwik8.zip"
    add_files(archive, {"enwik8": text})
    return {"MATTMAHONEY_MIRROR": f"file://{root}/dc", "_sha256": hashlib.sha256(archive.read_bytes()).hexdigest()}


def text8(root: Path, size=20000) -> dict:
    rng = random.Random(6)
    words = " ".join(rng.choice(["anarchism", "originated", "as", "a", "term", "of", "abuse"]) for _ in range(size))
    add_files(root / "dc/text8.zip", {"text8": " " + words[:size]})
    return {"MATTMAHONEY_MIRROR": f"file://{root}/dc"}


def rwth(root: Path, pairs=12) -> dict:
    de, en = sentences(WORDS_DE, pairs, 21), sentences(WORDS_EN, pairs, 22)
    rng = random.Random(23)
    links = []
    for d, e in zip(de, en):
        n, m = len(d.split()), len(e.split())
        links.append(" ".join(f"{i}{rng.choice(['-', 'p'])}{rng.randint(1, m)}" for i in range(1, n + 1)))
    archive = root / "rwth/goldAlignment.tgz"
    add_files(archive, {"goldAlignment/de": ("\n".join(de) + "\n").encode("latin-1"),
                        "goldAlignment/en": ("\n".join(en) + "\n").encode("latin-1"),
                        "goldAlignment/alignmentDeEn": "\n".join(links) + "\n"})
    return {"RWTH_URL": f"file://{archive}"}
