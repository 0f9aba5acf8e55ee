"""Point-MAE on first use: download from a server on 127.0.0.1, hash check, conversion, cache."""

import hashlib
import io
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mafr
from mafr import download
from mafr.cli import main
from mafr.extractors import PointMAEConfig, PointMAEEncoder, build_point_extractor

# Point-MAE's shape (12 blocks, 6 heads) at a tiny width, so the converter's defaults apply.
TINY = PointMAEConfig(num_groups=8, group_size=8, embed_dim=12, depth=12, num_heads=6)


def _fake_checkpoint() -> tuple[bytes, dict]:
    state = PointMAEEncoder.random(TINY, seed=3).state_dict()
    buf = io.BytesIO()
    torch.save({"base_model": {f"MAE_encoder.{k}": v for k, v in state.items()}, "epoch": 300}, buf)
    return buf.getvalue(), state


class _Server:
    """Serves ``files`` (path -> bytes); ``/short/...`` announces more bytes than it sends."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.requests = files, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                outer.requests.append(self.path)
                short = self.path.startswith("/short/")
                body = outer.files.get(self.path.removeprefix("/short") if short else self.path)
                if body is None:
                    self.send_error(404, "not here")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if short else body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("MAFR_POINTMAE_WEIGHTS", raising=False)
    body, state = _fake_checkpoint()
    with _Server({"/pretrain.pth": body}) as srv:
        srv.sha256, srv.state = hashlib.sha256(body).hexdigest(), state
        yield srv


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_download_checks_converts_and_keeps_only_the_converted_encoder(server, tmp_path):
    path = download.download_pointmae(
        url=server.url + "/pretrain.pth", sha256=server.sha256, cache_dir=tmp_path, progress=False
    )
    assert path == tmp_path / "pointmae"
    assert _files(tmp_path) == ["pointmae", "pointmae/config.json", "pointmae/model.safetensors"]
    loaded = PointMAEEncoder.from_pretrained(path)
    assert loaded.config.embed_dim == 12 and loaded.config.depth == 12
    for key, value in server.state.items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # Second call: already there, no request.
    assert download.download_pointmae(cache_dir=tmp_path, progress=False) == path
    assert server.requests == ["/pretrain.pth"]


def test_wrong_hash_leaves_nothing_and_says_so(server, tmp_path):
    with pytest.raises(mafr.WeightsUnavailableError, match=f"SHA-256 {server.sha256}, expected 0{{64}}"):
        download.download_pointmae(url=server.url + "/pretrain.pth", sha256="0" * 64, cache_dir=tmp_path, progress=False)
    assert _files(tmp_path) == []


def test_partial_download_leaves_nothing(server, tmp_path):
    with pytest.raises(mafr.WeightsUnavailableError, match="stopped early"):
        download.download_pointmae(
            url=server.url + "/short/pretrain.pth", sha256=server.sha256, cache_dir=tmp_path, progress=False
        )
    assert _files(tmp_path) == []


def test_missing_file_on_the_server_names_the_http_status(server, tmp_path):
    with pytest.raises(mafr.WeightsUnavailableError, match="HTTP 404.*mafr convert pointmae"):
        download.download_pointmae(url=server.url + "/nope.pth", cache_dir=tmp_path, progress=False)
    assert _files(tmp_path) == []


def test_no_network_gives_the_manual_steps(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(mafr.WeightsUnavailableError, match="downloading .* failed.*To install it by hand"):
        download.download_pointmae(url=f"http://127.0.0.1:{port}/pretrain.pth", cache_dir=tmp_path, progress=False)
    assert _files(tmp_path) == []


def test_offline_mode_never_touches_the_network(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(mafr.WeightsUnavailableError) as info:
        download.download_pointmae(url=server.url + "/pretrain.pth", cache_dir=tmp_path, progress=False)
    message = str(info.value)
    assert "HF_HUB_OFFLINE=1" in message and "mafr convert pointmae" in message and download.POINTMAE_SHA256 in message
    assert server.requests == [] and _files(tmp_path) == []


def test_default_weights_are_fetched_on_first_use_into_mafr_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MAFR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(download, "POINTMAE_URL", server.url + "/pretrain.pth")
    monkeypatch.setattr(download, "POINTMAE_SHA256", server.sha256)
    config = mafr.MAFRConfig(
        rgb={"kind": "offline"},
        points={"num_groups": 8, "group_size": 8, "embed_dim": 12, "depth": 12, "num_heads": 6, "fps_max_points": None},
    )
    encoder = build_point_extractor(config)
    assert isinstance(encoder, PointMAEEncoder)
    assert (tmp_path / "cache" / "pointmae" / "model.safetensors").is_file()
    build_point_extractor(config)  # from the cache now
    assert server.requests == ["/pretrain.pth"]


def test_mafr_pointmae_weights_still_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MAFR_POINTMAE_WEIGHTS", str(tmp_path / "mine"))
    monkeypatch.setenv("MAFR_CACHE", str(tmp_path / "cache"))
    assert download.pointmae_dir() == tmp_path / "mine"
    monkeypatch.delenv("MAFR_POINTMAE_WEIGHTS")
    assert download.pointmae_dir() == tmp_path / "cache" / "pointmae"
    assert download.pointmae_dir(tmp_path / "x") == tmp_path / "x" / "pointmae"


def test_cli_download_prints_the_converted_path_last(server, tmp_path, capsys):
    rc = main(["download", "pointmae", "--url", server.url + "/pretrain.pth", "--sha256", server.sha256.upper(),
               "--cache-dir", str(tmp_path), "--quiet"])
    assert rc == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path / "pointmae")


def test_cli_download_failure_is_one_error_line(server, tmp_path, capsys):
    rc = main(["download", "pointmae", "--url", server.url + "/pretrain.pth", "--sha256", "1" * 64,
               "--cache-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("mafr: error:") and "SHA-256" in err[0]
    assert _files(tmp_path) == []


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=70).filter(lambda s: not (len(s.strip()) == 64 and all(c in "0123456789abcdefABCDEF" for c in s.strip()))))
def test_a_malformed_sha256_is_refused_before_any_download(text):
    with pytest.raises(ValueError, match="64 hexadecimal"):
        download.download_pointmae(url="http://127.0.0.1:9/never", sha256=text, cache_dir="/nonexistent/never")


@given(st.sampled_from(["ftp://host/x.pth", "file:///etc/passwd", "pretrain.pth", ""]))
def test_only_http_urls_are_accepted(url):
    with pytest.raises(ValueError, match="http"):
        download.download_pointmae(url=url, cache_dir="/nonexistent/never")
