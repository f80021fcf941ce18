"""Dataset download against a server on 127.0.0.1 serving an archive the test builds: a good download, a corrupt
one (checksum mismatch -> next mirror), a truncated one (resumed with Range), and all mirrors failing."""

import hashlib
import http.server
import io
import tarfile
import threading

import pytest
from PIL import Image

from da.data import download as D
from da.data.domain import load_domain
from da.errors import UserError

DOMAINS = ("amazon", "dslr", "webcam")


def _office31_archive() -> bytes:
    """office31/<domain>/images/<class>/<n>.jpg, the layout of pytorch-adapt's office31.tar.gz: 2 classes x 2 images."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for d, domain in enumerate(DOMAINS):
            for c, cls in enumerate(("back_pack", "bike")):
                for i in range(2):
                    img = io.BytesIO()
                    Image.new("RGB", (8, 8), (40 * d, 100 * c, 60 * i)).save(img, format="JPEG")
                    info = tarfile.TarInfo(f"office31/{domain}/images/{cls}/{i}.jpg")
                    info.size = len(img.getvalue())
                    tar.addfile(info, io.BytesIO(img.getvalue()))
    return buf.getvalue()


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    log: list = []

    def do_GET(self):  # noqa: N802
        rng = self.headers.get("Range")
        self.log.append((self.path, rng))
        body = self.files.get(self.path.split("?")[0])
        if body is None:
            self.send_error(404)
            return
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        truncate = self.path.startswith("/trunc") and not rng
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body) - start))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        # the truncated file: the first answer stops half way and closes the connection
        self.wfile.write(body[start: len(body) // 2] if truncate else body[start:])
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    good = _office31_archive()
    _Handler.files = {"/good/office31.tar.gz": good, "/corrupt/office31.tar.gz": good[:-10] + b"0123456789",
                      "/trunc/office31.tar.gz": good}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", hashlib.md5(good).hexdigest()
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def _mirror(base, kind, md5, name=None):
    return D.Mirror(name or kind, (D.Archive(f"{base}/{kind}/office31.tar.gz", "office31.tar.gz", md5=md5),))


def test_good_download_extracts_into_the_documented_layout(server, tmp_path):
    base, md5 = server
    folder = D.download_dataset("office31", tmp_path, mirrors=[_mirror(base, "good", md5)], quiet=True)
    assert folder == tmp_path / "office31"
    assert sorted(p.name for p in folder.iterdir()) == list(DOMAINS)
    assert (folder / "amazon" / "images" / "bike" / "1.jpg").is_file()
    dom = load_domain("office31/webcam", root=str(tmp_path))["all"]
    assert len(dom) == 4 and dom.classes == ["back_pack", "bike"]
    assert not (tmp_path / ".downloads" / "office31" / "good").exists()  # archives removed once extracted
    assert D.is_present("office31", tmp_path)
    # a second call finds the data and downloads nothing
    _Handler.log.clear()
    D.download_dataset("office31", tmp_path, mirrors=[_mirror(base, "good", md5)], quiet=True)
    assert _Handler.log == []


def test_checksum_mismatch_moves_on_to_the_next_mirror(server, tmp_path):
    base, md5 = server
    mirrors = [_mirror(base, "corrupt", md5), _mirror(base, "good", md5)]
    D.download_dataset("office31", tmp_path, mirrors=mirrors, quiet=True)
    assert (tmp_path / "office31" / "dslr" / "images" / "back_pack" / "0.jpg").is_file()
    assert not (tmp_path / ".downloads" / "office31" / "corrupt" / "office31.tar.gz").exists()


def test_truncated_download_is_resumed_with_range(server, tmp_path):
    base, md5 = server
    _Handler.log.clear()
    D.download_dataset("office31", tmp_path, mirrors=[_mirror(base, "trunc", md5)], quiet=True)
    size = len(_Handler.files["/trunc/office31.tar.gz"])
    assert _Handler.log == [("/trunc/office31.tar.gz", None), ("/trunc/office31.tar.gz", f"bytes={size // 2}-")]
    assert D.is_present("office31", tmp_path)


def test_all_mirrors_failing_names_every_mirror(server, tmp_path):
    base, md5 = server
    mirrors = [_mirror(base, "corrupt", md5, "mirror A"), _mirror(base, "gone", md5, "mirror B")]
    with pytest.raises(UserError) as err:
        D.download_dataset("office31", tmp_path, mirrors=mirrors, quiet=True)
    msg = str(err.value)
    assert "tried 2 mirror(s)" in msg
    assert f"mirror A: md5 " in msg and f"does not match the recorded {md5}" in msg and f"{base}/corrupt/" in msg
    assert "mirror B: HTTP 404" in msg and f"{base}/gone/" in msg
    assert "Get it by hand" in msg and not (tmp_path / "office31").exists()


def test_download_option_and_command(server, tmp_path, monkeypatch, capsys):
    base, md5 = server
    monkeypatch.setitem(D.MIRRORS, "office31", [_mirror(base, "good", md5)])
    dom = load_domain("office31/amazon", root=str(tmp_path / "a"), download=True)["all"]  # --data.options
    assert len(dom) == 4
    assert D.data_main(["download", "office31", "--root", str(tmp_path / "b")]) == 0  # da data download
    assert D.is_present("office31", tmp_path / "b")
    assert "ready in" in capsys.readouterr().out


def test_every_benchmark_has_a_mirror_with_a_recorded_check_or_says_so():
    assert set(D.MIRRORS) == {"office31", "officehome", "pacs", "visda", "domainnet"}
    checked = {name: any(a.md5 or a.size for m in ms for a in m.archives) for name, ms in D.MIRRORS.items()}
    assert checked == {"office31": True, "officehome": True, "pacs": True, "visda": True, "domainnet": False}
    assert "DomainNet" in D.__doc__ and "no checksum or size published" in D.__doc__
    assert sum(len(ms) for ms in D.MIRRORS.values()) == 9
