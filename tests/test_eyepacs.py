"""EyePACS acquisition and the labels table: names, split, folder validation,
Kaggle credentials and HTTP errors (fake API, no network), resume, multi-part
archives built here, and the rule run end to end on a small folder."""

from __future__ import annotations

import io
import json
import random
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import requests
import yaml

from conftest import REPO, run_snakemake
from lesioncl.eyepacs import EyepacsError, parse_image_names
from lesioncl.eyepacs.archives import unpack_all
from lesioncl.eyepacs.download import download_competition, fetch_file
from lesioncl.eyepacs.kaggle_api import (
    find_kaggle_credentials,
    kaggle_config_dir,
    make_kaggle_api,
    missing_credentials_message,
)
from lesioncl.eyepacs.labels import build_labels, write_labels
from lesioncl.eyepacs.volumes import ConcatenatedFile, find_archive_sets

TRAIN = {"10_left": 0, "10_right": 1, "13_left": 4, "13_right": 2, "15_left": 3}
TEST = {"1_left": (0, "Public"), "1_right": (3, "Private"), "2_left": (1, "Private"), "2_right": (2, "Public")}


# --------------------------------------------------------------------------- helpers
def _jpeg_bytes(i: int) -> bytes:
    # Content is irrelevant here (the crop stage decodes); random, so that the
    # compressed data, not the headers, makes up the archives.
    return random.Random(i).randbytes(3000 + 17 * i)


def make_raw(root: Path, train=TRAIN, test=TEST, files=True) -> Path:
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    pd.DataFrame({"image": list(train), "level": list(train.values())}).to_csv(root / "trainLabels.csv", index=False)
    pd.DataFrame(
        {"image": list(test), "level": [v[0] for v in test.values()], "Usage": [v[1] for v in test.values()]}
    ).to_csv(root / "retinopathy_solution.csv", index=False)
    if files:
        for i, name in enumerate(train):
            (root / "train" / f"{name}.jpeg").write_bytes(_jpeg_bytes(i))
        for i, name in enumerate(test):
            (root / "test" / f"{name}.jpeg").write_bytes(_jpeg_bytes(i + 50))
    return root


def http_error(status: int) -> requests.exceptions.HTTPError:
    """What kaggle 1.7's client raises (requests' raise_for_status)."""
    response = requests.Response()
    response.status_code = status
    response.url = "https://www.kaggle.com/api/v1/competitions/data/list/diabetic-retinopathy-detection"
    return requests.exceptions.HTTPError(f"{status} Client Error for url: {response.url}", response=response)


class FakeApi:
    """Stands in for KaggleApi: lists ``files`` two per page and 'downloads' them."""

    def __init__(self, files: dict[str, bytes], list_error=None, download_error=None, zipped=(), truncate=()):
        self.files = files
        self.list_error = list_error
        self.download_error = download_error
        self.zipped = set(zipped)  # served as name.zip, as Kaggle does for some files
        self.truncate = set(truncate)  # served short (a broken transfer)
        self.downloaded: list[str] = []
        self.bundle: dict[str, bytes] = {}

    def competition_list_files(self, competition, page_token=None, page_size=20):
        if self.list_error:
            raise self.list_error
        names = sorted(self.files)
        start = int(page_token or 0)
        page = names[start : start + 2]
        token = str(start + 2) if start + 2 < len(names) else ""
        return SimpleNamespace(
            files=[SimpleNamespace(name=n, total_bytes=len(self.files[n])) for n in page],
            next_page_token=token,
        )

    def competition_download_files(self, competition, path=None, force=False, quiet=True):
        # The one-zip download of everything, named after the competition.
        with zipfile.ZipFile(Path(path) / f"{competition}.zip", "w") as z:
            for name, data in self.bundle.items():
                z.writestr(name, data)

    def competition_download_file(self, competition, file_name, path=None, force=False, quiet=False):
        if self.download_error:
            raise self.download_error
        self.downloaded.append(file_name)
        data = self.files[file_name]
        if file_name in self.truncate:
            data = data[: len(data) // 2]
        out = Path(path)
        if file_name in self.zipped:
            with zipfile.ZipFile(out / f"{file_name}.zip", "w") as z:
                z.writestr(file_name, data)
        else:
            (out / file_name).write_bytes(data)


def image_zip(prefix: str, names) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{prefix}/", b"")
        for i, name in enumerate(names):
            z.writestr(f"{prefix}/{name}.jpeg", _jpeg_bytes(i))
    return buf.getvalue()


def split_bytes(data: bytes, n_parts: int) -> list[bytes]:
    step = -(-len(data) // n_parts)
    return [data[i : i + step] for i in range(0, len(data), step)]


def csv_zip(name: str, text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, text)
    return buf.getvalue()


def competition_files(n_train_parts=3, n_test_parts=2) -> dict[str, bytes]:
    """The competition's files as Kaggle serves them, built from TRAIN/TEST."""
    files = {}
    for stem, names, n in (("train", TRAIN, n_train_parts), ("test", TEST, n_test_parts)):
        for k, part in enumerate(split_bytes(image_zip(stem, names), n), start=1):
            files[f"{stem}.zip.{k:03d}"] = part
    train_csv = "image,level\n" + "".join(f"{k},{v}\n" for k, v in TRAIN.items())
    test_csv = "image,level,Usage\n" + "".join(f"{k},{v[0]},{v[1]}\n" for k, v in TEST.items())
    files["trainLabels.csv.zip"] = csv_zip("trainLabels.csv", train_csv)
    files["retinopathy_solution.csv"] = test_csv.encode()
    files["sampleSubmission.csv.zip"] = csv_zip("sampleSubmission.csv", "image,level\n")
    return files


@pytest.fixture
def no_kaggle_env(monkeypatch, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    return home


# --------------------------------------------------------------------------- names, split
def test_parse_image_names_good_and_bad():
    names = pd.Series(["10_left", "10_right.jpeg", " 44349_right ", "10_Left", "10-left", "left_10",
                       "10_left.jpg", "007_left", "", "abc_left", "10_left_2"])
    parsed = parse_image_names(names)
    assert parsed["patient_id"].iloc[:3].tolist() == [10, 10, 44349]
    assert parsed["eye"].iloc[:3].tolist() == ["left", "right", "right"]
    assert parsed["image"].iloc[1] == "10_right"
    assert parsed["patient_id"].iloc[3:].isna().all()
    assert parsed["eye"].iloc[3:].isna().all()


def test_split_and_table(tmp_path):
    raw = make_raw(tmp_path / "raw")
    labels, problems, summary = build_labels(raw, expect_full=False)
    assert list(labels.columns) == ["image", "patient_id", "eye", "level", "split", "path"]
    split = dict(zip(labels["image"], labels["split"]))
    assert {k: split[k] for k in TRAIN} == dict.fromkeys(TRAIN, "train")
    assert split["1_left"] == "val" and split["2_right"] == "val"  # Usage Public
    assert split["1_right"] == "test" and split["2_left"] == "test"  # Usage Private
    assert dict(zip(labels["image"], labels["level"])) == {**TRAIN, **{k: v[0] for k, v in TEST.items()}}
    assert labels["split"].tolist() == sorted(labels["split"], key=["train", "val", "test"].index)
    row = labels.set_index("image").loc["13_right"]
    assert (row["patient_id"], row["eye"]) == (13, "right")
    assert Path(row["path"]) == raw / "train" / "13_right.jpeg"
    assert all(Path(p).is_file() for p in labels["path"])
    assert summary["counts"] == {"train": 5, "val": 2, "test": 2}
    assert summary["levels"]["train"] == {"0": 1, "1": 1, "2": 1, "3": 1, "4": 1}
    assert summary["matches_full_dataset"] is False
    assert problems.empty


def test_write_labels_outputs(tmp_path):
    raw = make_raw(tmp_path / "raw")
    out = tmp_path / "out"
    write_labels(raw, out / "labels.csv", out / "summary.json", out / "problems.csv", expect_full=True)
    labels = pd.read_csv(out / "labels.csv")
    assert len(labels) == 9 and labels["patient_id"].dtype.kind == "i"
    summary = json.loads((out / "summary.json").read_text())
    # Not the full competition: a warning is recorded for the real data.
    assert any("differ from the full competition" in w for w in summary["warnings"])
    assert pd.read_csv(out / "problems.csv").empty


def test_zipped_label_files_are_read(tmp_path):
    raw = make_raw(tmp_path / "raw")
    text = (raw / "trainLabels.csv").read_text()
    (raw / "trainLabels.csv").unlink()
    (raw / "trainLabels.csv.zip").write_bytes(csv_zip("trainLabels.csv", text))
    labels, _, _ = build_labels(raw, expect_full=False)
    assert (labels["split"] == "train").sum() == len(TRAIN)


# --------------------------------------------------------------------------- validation
def test_missing_folder(tmp_path):
    with pytest.raises(EyepacsError, match=r"does not exist; set eyepacs.raw_dir"):
        build_labels(tmp_path / "nowhere")


def test_missing_image_folder(tmp_path):
    raw = make_raw(tmp_path / "raw")
    for f in (raw / "test").iterdir():
        f.unlink()
    (raw / "test").rmdir()
    with pytest.raises(EyepacsError, match=r"raw/test is missing"):
        build_labels(raw)


def test_empty_image_folder(tmp_path):
    """A train/ or test/ folder without files (not unpacked yet) stops with the fix."""
    raw = make_raw(tmp_path / "raw")
    for f in (raw / "test").iterdir():
        f.unlink()
    with pytest.raises(EyepacsError, match=r"test is empty: it must hold the competition's test images"):
        build_labels(raw)


def test_other_image_formats_are_listed(tmp_path):
    """PNG / TIFF / .jpg files are images too; the table's path is the file found; a
    second file of one image is listed, not used twice."""
    raw = make_raw(tmp_path / "raw")
    (raw / "train" / "10_left.jpeg").rename(raw / "train" / "10_left.png")
    (raw / "train" / "10_right.jpeg").rename(raw / "train" / "10_right.TIFF")
    (raw / "test" / "1_left.jpeg").rename(raw / "test" / "1_left.jpg")
    (raw / "train" / "13_left.png").write_bytes(b"x")  # beside 13_left.jpeg
    (raw / "train" / "notes.txt").write_text("x")
    labels, problems, _ = build_labels(raw, expect_full=False)
    paths = dict(zip(labels["image"], labels["path"]))
    assert len(labels) == len(TRAIN) + len(TEST)
    assert paths["10_left"].endswith("train/10_left.png") and paths["10_right"].endswith("10_right.TIFF")
    assert paths["1_left"].endswith("test/1_left.jpg") and paths["13_left"].endswith("13_left.jpeg")
    extra = problems[problems["reason"] == "unexpected_entry"].set_index("file")["detail"]
    assert "13_left.jpeg is used" in extra[str(raw / "train" / "13_left.png")]
    assert str(raw / "train" / "notes.txt") in extra.index
    assert not problems["reason"].isin(["missing_file", "unlabelled_file"]).any(), problems


def test_missing_label_csv(tmp_path):
    raw = make_raw(tmp_path / "raw")
    (raw / "retinopathy_solution.csv").unlink()
    with pytest.raises(EyepacsError, match=r"retinopathy_solution.csv is missing.*download"):
        build_labels(raw)


def test_label_csv_without_column(tmp_path):
    raw = make_raw(tmp_path / "raw")
    (raw / "retinopathy_solution.csv").write_text("image,level\n1_left,0\n")
    with pytest.raises(EyepacsError, match=r"retinopathy_solution.csv lacks the column\(s\) \['Usage'\]"):
        build_labels(raw)


def test_bad_level_is_fatal_and_listed(tmp_path):
    raw = make_raw(tmp_path / "raw", train={**TRAIN, "13_left": 5, "13_right": "x"})
    with pytest.raises(EyepacsError, match=r"2 bad label row\(s\) \(bad_level=2\)") as info:
        build_labels(raw)
    assert "13_left.jpeg (bad_level: trainLabels.csv: level 5 is not one of 0..4)" in str(info.value)
    # The files of rejected rows are not reported a second time as unlabelled.
    assert "unlabelled_file" not in set(info.value.problems["reason"])
    # write_labels keeps the list where Snakemake does not delete it.
    err_csv = tmp_path / "logs" / "label_problems.csv"
    with pytest.raises(EyepacsError, match=str(err_csv)):
        write_labels(raw, tmp_path / "l.csv", tmp_path / "s.json", tmp_path / "p.csv", error_problems_csv=err_csv)
    listed = pd.read_csv(err_csv)
    assert sorted(listed.loc[listed["reason"] == "bad_level", "image"]) == ["13_left", "13_right"]
    assert not (tmp_path / "l.csv").exists()


def test_bad_usage_bad_name_and_duplicates_are_fatal(tmp_path):
    test = {**TEST, "2_left": (1, "Publik")}
    raw = make_raw(tmp_path / "raw", test=test)
    with pytest.raises(EyepacsError, match=r"bad_usage=1"):
        build_labels(raw)
    raw2 = make_raw(tmp_path / "raw2")
    (raw2 / "trainLabels.csv").write_text("image,level\n10_left,0\n10_left,1\n10-right,1\n13_left,4\n")
    with pytest.raises(EyepacsError) as info:
        build_labels(raw2)
    assert "duplicate_label=2" in str(info.value) and "bad_name=1" in str(info.value)
    assert set(info.value.problems["reason"]) >= {"duplicate_label", "bad_name"}


def test_unlabelled_and_missing_files_are_warnings_then_errors(tmp_path):
    raw = make_raw(tmp_path / "raw")
    (raw / "train" / "15_left.jpeg").unlink()  # label row without a file
    (raw / "test" / "77_right.jpeg").write_bytes(b"x")  # file without a label row
    (raw / "train" / "notes.txt").write_text("?")  # not an image name: ignored, listed
    labels, problems, summary = build_labels(raw, max_missing=2, expect_full=False)
    assert "15_left" not in set(labels["image"]) and "77_right" not in set(labels["image"])
    reasons = dict(zip(problems["image"].fillna(problems["file"]), problems["reason"]))
    assert reasons["15_left"] == "missing_file"
    assert reasons["77_right"] == "unlabelled_file"
    assert reasons[str(raw / "train" / "notes.txt")] == "unexpected_entry"
    assert summary["problems"] == {"missing_file": 1, "unexpected_entry": 1, "unlabelled_file": 1}
    assert any("15_left.jpeg (missing_file: no image file" in w for w in summary["warnings"])
    with pytest.raises(EyepacsError, match=r"more than eyepacs.max_missing=1.*15_left.jpeg"):
        build_labels(raw, max_missing=1)


def test_file_in_the_wrong_folder_is_explained(tmp_path):
    raw = make_raw(tmp_path / "raw")
    (raw / "train" / "10_left.jpeg").rename(raw / "test" / "10_left.jpeg")
    _, problems, _ = build_labels(raw, expect_full=False)
    rows = problems.set_index("reason")
    assert "the file is in test/" in rows.loc["missing_file", "detail"]
    assert rows.loc["unlabelled_file", "image"] == "10_left"


# --------------------------------------------------------------------------- credentials, HTTP
def test_missing_credentials_message_without_importing_kaggle(no_kaggle_env, monkeypatch):
    monkeypatch.setitem(sys.modules, "kaggle", None)  # an import attempt would fail differently
    with pytest.raises(EyepacsError) as info:
        make_kaggle_api("diabetic-retinopathy-detection")
    msg = str(info.value)
    assert msg.startswith("No Kaggle API credentials")
    for needed in ("~/.kaggle/kaggle.json", "KAGGLE_USERNAME", "KAGGLE_KEY", "Create New Token",
                   "chmod 600", "competitions/diabetic-retinopathy-detection/rules",
                   "eyepacs.source: folder"):
        assert needed in msg
    # The whole download stops with the same message (no api given, nothing there).
    with pytest.raises(EyepacsError, match="No Kaggle API credentials"):
        download_competition("diabetic-retinopathy-detection", no_kaggle_env / "dl")


def test_credentials_lookup(no_kaggle_env, monkeypatch):
    home = no_kaggle_env
    assert find_kaggle_credentials() is None
    # Linux without ~/.kaggle: the client looks in $XDG_CONFIG_HOME/kaggle.
    assert kaggle_config_dir(platform="linux") == home / ".config" / "kaggle"
    (home / ".kaggle").mkdir()
    token = home / ".kaggle" / "kaggle.json"
    token.write_text("not json")
    with pytest.raises(EyepacsError, match=r"kaggle.json is not a valid Kaggle API token"):
        find_kaggle_credentials()
    token.write_text(json.dumps({"username": "ann", "key": "k"}))
    token.chmod(0o600)
    assert find_kaggle_credentials().username == "ann"
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / "elsewhere"))
    assert find_kaggle_credentials() is None
    monkeypatch.setenv("KAGGLE_USERNAME", "bob")
    monkeypatch.setenv("KAGGLE_KEY", "k2")
    creds = find_kaggle_credentials()
    assert creds.username == "bob" and "KAGGLE_KEY" in creds.source


def test_real_client_is_made_lazily_with_env_credentials(no_kaggle_env, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef")
    api = make_kaggle_api("diabetic-retinopathy-detection")  # authenticates locally, no network
    assert type(api).__name__ == "KaggleApi"


def test_new_style_api_token_lookup(no_kaggle_env, monkeypatch):
    """kaggle >= 1.8's API token: KAGGLE_API_TOKEN (the token or a file), ~/.kaggle/access_token;
    it wins over a legacy kaggle.json, as in the client."""
    home = no_kaggle_env
    (home / ".kaggle").mkdir()
    (home / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": "ann", "key": "k"}))
    token = home / ".kaggle" / "access_token"
    token.write_text("")
    with pytest.raises(EyepacsError, match=r"access_token is empty.*Generate New Token"):
        find_kaggle_credentials()
    token.write_text("KGAT_0123456789abcdef\n")
    token.chmod(0o600)
    creds = find_kaggle_credentials()
    assert creds.source == str(token) and creds.username is None
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_fedcba9876543210")
    assert find_kaggle_credentials().source == "the variable KAGGLE_API_TOKEN"
    monkeypatch.setenv("KAGGLE_API_TOKEN", "K" * 5000)  # longer than any path may be
    assert find_kaggle_credentials().source == "the variable KAGGLE_API_TOKEN"
    elsewhere = home / "token.txt"
    elsewhere.write_text("KGAT_1\n")
    monkeypatch.setenv("KAGGLE_API_TOKEN", str(elsewhere))
    assert str(elsewhere) in find_kaggle_credentials().source
    msg = missing_credentials_message("diabetic-retinopathy-detection", environ={}, home=home / "nobody")
    for needed in ("KAGGLE_API_TOKEN", "~/.kaggle/access_token", "Generate New Token", "kaggle.json"):
        assert needed in msg, needed


def test_real_client_authenticates_with_the_api_token(no_kaggle_env, monkeypatch):
    """The pinned kaggle client takes the new token (its server-side check stubbed: no network)."""
    from kaggle.api.kaggle_api_extended import KaggleApi

    seen = []
    monkeypatch.setattr(KaggleApi, "_introspect_token", lambda self, token: seen.append(token) or "someone")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_0123456789abcdef")
    api = make_kaggle_api("diabetic-retinopathy-detection")
    assert seen == ["KGAT_0123456789abcdef"]
    assert api.config_values[api.CONFIG_NAME_TOKEN] == "KGAT_0123456789abcdef"
    assert api.config_values[api.CONFIG_NAME_USER] == "someone"


def test_rejected_api_token_is_one_clear_error(no_kaggle_env, monkeypatch):
    """An expired token: the client gives up (it would exit); the user gets the fix."""
    from kaggle.api.kaggle_api_extended import KaggleApi

    monkeypatch.setattr(KaggleApi, "_introspect_token", lambda self, token: None)  # inactive token
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_expired")
    with pytest.raises(EyepacsError, match=r"could not authenticate with the variable KAGGLE_API_TOKEN.*Generate New Token"):
        make_kaggle_api("diabetic-retinopathy-detection")


@pytest.mark.parametrize("where", ["list", "download"])
def test_rules_not_accepted_403(tmp_path, where):
    files = competition_files()
    api = FakeApi(files, **{f"{where}_error": http_error(403)})
    with pytest.raises(EyepacsError) as info:
        download_competition("diabetic-retinopathy-detection", tmp_path / "dl", api=api)
    msg = str(info.value)
    assert "HTTP 403" in msg and "rules have not been accepted" in msg
    assert "https://www.kaggle.com/competitions/diabetic-retinopathy-detection/rules" in msg
    assert "I Understand and Accept" in msg and msg.rstrip().endswith("then rerun.")


def test_bad_token_401_and_old_client_exceptions(tmp_path):
    with pytest.raises(EyepacsError, match=r"rejected the API credentials.*HTTP 401.*Create New Token"):
        download_competition("x", tmp_path / "dl", api=FakeApi({}, list_error=http_error(401)))

    class ApiException(Exception):  # kaggle < 1.7: kaggle.rest.ApiException
        status = 403

    with pytest.raises(EyepacsError, match="HTTP 403"):
        download_competition("x", tmp_path / "dl", api=FakeApi({}, list_error=ApiException("Forbidden")))
    # Other failures (network) are not dressed up: Snakemake's retries handle them.
    with pytest.raises(requests.exceptions.ConnectionError):
        download_competition("x", tmp_path / "dl", api=FakeApi({}, list_error=requests.exceptions.ConnectionError()))


# --------------------------------------------------------------------------- download, resume
def test_download_resume_and_verify(tmp_path):
    files = competition_files()
    dl = tmp_path / "dl"
    api = FakeApi(files, zipped={"retinopathy_solution.csv"})
    manifest = download_competition("c", dl, api=api)
    needed = sorted(n for n in files if not n.startswith("sample"))
    assert sorted(api.downloaded) == needed  # sampleSubmission is not needed
    assert manifest["files"] == {n: len(files[n]) for n in needed}
    for name in needed:  # zipped delivery unwrapped; sizes as listed
        assert (dl / "archives" / name).read_bytes() == files[name]

    # Resume: complete files are skipped, a partial one is fetched again.
    part = dl / "archives" / "train.zip.002"
    part.write_bytes(files["train.zip.002"][:100])
    api2 = FakeApi(files)
    download_competition("c", dl, api=api2)
    assert api2.downloaded == ["train.zip.002"]
    assert part.read_bytes() == files["train.zip.002"]

    # A transfer that ends short is deleted and reported.
    (dl / "archives" / "test.zip.001").unlink()
    with pytest.raises(EyepacsError, match=r"test.zip.001: got \d+ bytes but Kaggle lists"):
        download_competition("c", dl, api=FakeApi(files, truncate={"test.zip.001"}))
    assert not (dl / "archives" / "test.zip.001").exists()


class RangeServer:
    """A local HTTP server for one file, as Kaggle's storage serves it: Content-Length,
    Accept-Ranges, an ETag, Range requests (206). ``broken``: the first response
    stops after ``cut`` bytes and later ones fail with 503 (a transfer that dies)."""

    def __init__(self, data: bytes, cut: int):
        import http.server
        import threading

        self.data, self.cut, self.broken, self.requests = data, cut, True, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append(rng)
                if server.broken and len(server.requests) > 1:
                    self.send_error(503)
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                body = server.data[start:]
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", '"v1"')
                self.send_header("Last-Modified", "Mon, 02 Jan 2017 10:00:00 GMT")
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.data) - 1}/{len(server.data)}")
                self.end_headers()
                if server.broken:
                    body = body[: server.cut]
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                if server.broken:
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class ClientApi:
    """competition_download_file as kaggle 2.x does it after the API call: the real
    client's download_needed / download_file (its resume logic) on the server's response."""

    def __init__(self, url: str):
        from kaggle.api.kaggle_api_extended import KaggleApi

        self.api, self.url = KaggleApi(), url

    def competition_download_file(self, competition, file_name, path=None, force=False, quiet=False):
        response = requests.get(f"{self.url}/{file_name}", stream=True, timeout=30)
        outfile = str(Path(path) / file_name)
        if force or self.api.download_needed(response, outfile, quiet):
            self.api.download_file(response, outfile, None, quiet, not force)


def test_interrupted_part_resumes_from_its_bytes(tmp_path, monkeypatch):
    """A part whose transfer died mid-file continues from the bytes on disk (HTTP Range)
    on the next attempt, through the pinned kaggle client, instead of starting again."""
    import importlib

    # (kaggle/__init__ binds the name kaggle.api to a client object, so `import ... as` fails)
    extended = importlib.import_module("kaggle.api.kaggle_api_extended")
    monkeypatch.setattr(extended.time, "sleep", lambda s: None)  # the client's retry back-off
    # the client writes 1 MiB chunks: the transfer dies in the third one
    data = random.Random(7).randbytes(3_000_000)
    server = RangeServer(data, cut=2_500_000)
    try:
        archives = tmp_path / "archives"
        archives.mkdir()
        api = ClientApi(server.url)
        with pytest.raises(requests.exceptions.HTTPError):  # the first attempt dies
            fetch_file(api, "c", "train.zip.001", len(data), archives)
        staged = archives / ".downloading" / "train.zip.001" / "train.zip.001"
        have = staged.stat().st_size  # kept for the next attempt
        assert 0 < have < len(data) and not (archives / "train.zip.001").exists()

        server.broken, server.requests = False, []
        assert fetch_file(api, "c", "train.zip.001", len(data), archives) == "downloaded"
        assert (archives / "train.zip.001").read_bytes() == data
        assert f"bytes={have}-" in server.requests  # resumed where it stopped
        assert not (archives / ".downloading" / "train.zip.001").exists()
    finally:
        server.close()


def test_listing_without_needed_files(tmp_path):
    files = competition_files()
    del files["trainLabels.csv.zip"]
    with pytest.raises(EyepacsError, match=r"lacks trainLabels.csv\[.zip\].*into .*archives and rerun"):
        download_competition("c", tmp_path / "dl", api=FakeApi(files))
    # Put there by hand, a label file missing from the listing is accepted.
    (tmp_path / "dl" / "archives" / "trainLabels.csv").write_text("image,level\n10_left,0\n")
    manifest = download_competition("c", tmp_path / "dl", api=FakeApi(files))
    assert "trainLabels.csv" not in manifest["files"] and "train.zip.001" in manifest["files"]


def test_empty_listing_falls_back_to_the_competition_zip(tmp_path):
    api = FakeApi({})
    api.bundle = competition_files()
    manifest = download_competition("c", tmp_path / "dl", api=api)
    assert (tmp_path / "dl" / "c.zip").is_file() and not (tmp_path / "dl" / ".downloading").exists()
    assert manifest["files"]["test.zip.002"] == len(api.bundle["test.zip.002"])


def test_competition_zip_is_used_without_network(tmp_path, no_kaggle_env):
    files = competition_files()
    dl = tmp_path / "dl"
    dl.mkdir()
    with zipfile.ZipFile(dl / "c.zip", "w") as z:  # what `kaggle competitions download` leaves
        for name, data in files.items():
            z.writestr(name, data)
    manifest = download_competition("c", dl)  # no credentials, no api: not needed
    assert manifest["files"]["train.zip.003"] == len(files["train.zip.003"])
    report = unpack_all(dl / "archives", dl / "raw")
    assert report["folders"]["train"]["written"] == len(TRAIN)


# --------------------------------------------------------------------------- archives
def _write_archives(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def test_concatenated_file_reads_across_parts(tmp_path):
    data = bytes(range(256)) * 40
    paths = []
    for k, chunk in enumerate(split_bytes(data, 4)):
        paths.append(tmp_path / f"x.{k}")
        paths[-1].write_bytes(chunk)
    with io.BufferedReader(ConcatenatedFile(paths), buffer_size=300) as f:
        assert f.read() == data
        f.seek(2550)
        assert f.read(100) == data[2550:2650]
        f.seek(-10, io.SEEK_END)
        assert f.read() == data[-10:]


def test_unpack_multipart_zip_into_raw_layout(tmp_path):
    files = competition_files(n_train_parts=4, n_test_parts=3)
    archives = tmp_path / "archives"
    _write_archives(archives, files)
    # Each part alone is not a zip: only their concatenation is.
    assert not zipfile.is_zipfile(archives / "train.zip.002")
    report = unpack_all(archives, tmp_path / "raw")
    raw = tmp_path / "raw"
    assert sorted(p.name for p in (raw / "train").iterdir()) == sorted(f"{n}.jpeg" for n in TRAIN)
    assert (raw / "test" / "2_right.jpeg").read_bytes() == _jpeg_bytes(3)
    assert report["folders"]["train"]["written"] == len(TRAIN)
    assert (raw / "trainLabels.csv").is_file() and (raw / "retinopathy_solution.csv").is_file()
    assert (raw / "unpack_report.json").is_file()
    labels, problems, _ = build_labels(raw, expect_full=False)  # the unpacked folder validates
    assert len(labels) == len(TRAIN) + len(TEST) and problems.empty


def test_corrupt_part_is_found_and_deleted(tmp_path):
    files = competition_files(n_train_parts=3)
    data = bytearray(files["train.zip.002"])
    data[len(data) // 2] ^= 0xFF
    files["train.zip.002"] = bytes(data)
    archives = tmp_path / "archives"
    _write_archives(archives, files)
    manifest = archives / "download_manifest.json"
    manifest.write_text("{}")
    with pytest.raises(EyepacsError, match=r"train.zip: member train/.* is corrupt.*deleted .*train.zip.002"):
        unpack_all(archives, tmp_path / "raw", delete_corrupt=True, manifest=manifest)
    assert not (archives / "train.zip.002").exists() and not manifest.exists()
    assert (archives / "train.zip.001").exists()


def test_missing_part_is_named(tmp_path):
    files = competition_files(n_train_parts=4)
    del files["train.zip.003"]
    _write_archives(tmp_path / "a", files)
    with pytest.raises(EyepacsError, match=r"parts of train.zip are missing: train.zip.003"):
        find_archive_sets(tmp_path / "a")


def test_unpack_7z_volumes(tmp_path):
    py7zr = pytest.importorskip("py7zr")
    pytest.importorskip("multivolumefile")
    files = competition_files()
    src = tmp_path / "src" / "train"
    src.mkdir(parents=True)
    for i, name in enumerate(TRAIN):
        (src / f"{name}.jpeg").write_bytes(_jpeg_bytes(i))
    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as z:
        z.writeall(src, arcname="train")
    archives = tmp_path / "archives"
    _write_archives(archives, {k: v for k, v in files.items() if not k.startswith("train.zip")})
    for k, chunk in enumerate(split_bytes(buf.getvalue(), 3), start=1):
        (archives / f"train.7z.{k:03d}").write_bytes(chunk)
    report = unpack_all(archives, tmp_path / "raw")
    assert report["folders"]["train"]["written"] == len(TRAIN)
    assert (tmp_path / "raw" / "train" / "13_left.jpeg").read_bytes() == _jpeg_bytes(2)


# --------------------------------------------------------------------------- the rule
@pytest.mark.slow
def test_rule_eyepacs_labels_on_a_folder(tmp_path):
    raw = make_raw(tmp_path / "raw")
    (raw / "train" / "15_left.jpeg").unlink()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["eyepacs"].update(source="folder", raw_dir=str(raw))
    # real data: no generator's boxes for the oracle control (plan.check_sources)
    config["evaluation"]["controls"] = ["lesion_cl_random"]
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    run_snakemake(work, "--cores", "1", "results/eyepacs/labels.csv", configfile=cfg, timeout=300)
    labels = pd.read_csv(work / "results/eyepacs/labels.csv")
    assert len(labels) == len(TRAIN) + len(TEST) - 1
    problems = pd.read_csv(work / "results/eyepacs/label_problems.csv")
    assert problems["reason"].tolist() == ["missing_file"]
    assert (work / "logs/eyepacs_labels/eyepacs_labels.log").read_text().count("WARNING") >= 1
    # A folder that does not exist stops before any job, with the fix.
    config["eyepacs"]["raw_dir"] = str(tmp_path / "absent")
    cfg.write_text(yaml.safe_dump(config))
    proc = run_snakemake(work, "--cores", "1", "-n", "results/eyepacs/labels.csv", configfile=cfg, check=False)
    assert proc.returncode != 0
    assert "does not exist; set eyepacs.raw_dir" in proc.stdout + proc.stderr
