"""``download``: UCSC layout served from data/sample by a local HTTP server (with range requests)."""

import gzip
import hashlib
import http.server
import json
import socket
import threading

import pytest

from data_prep.cli import main
from data_prep.demo import demo_shards
from data_prep.download import DownloadError, download_genome




class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves files under ``server.root``; honours ``Range: bytes=N-``; records (path, range, status)."""

    def do_GET(self):
        path = self.server.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            self.server.log.append((self.path, None, 404))
            return
        data = self.server.override.get(self.path, path.read_bytes())
        rng = self.headers.get("Range")
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        if start >= len(data) and rng:
            self.send_error(416)
            self.server.log.append((self.path, rng, 416))
            return
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])
        self.server.log.append((self.path, rng, 206 if rng else 200))

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def ucsc(sample_data, tmp_path_factory):
    """A UCSC-like tree built from the shared real sequence, and a server for it."""
    root = tmp_path_factory.mktemp("ucsc")
    chroms = root / "goldenPath" / "hg38" / "chromosomes"
    bigzips = root / "goldenPath" / "hg38" / "bigZips"
    chroms.mkdir(parents=True)
    bigzips.mkdir(parents=True)
    hg38 = sample_data / "hg38"
    sources = {chroms / "chr20.fa.gz": (hg38 / "chr20_1-3000000.hg38.fa").read_bytes(),
               chroms / "chr2.fa.gz": gzip.decompress((hg38 / "chr2_1-2333275.hg38.fa.gz").read_bytes()),
               bigzips / "hg38.fa.gz": (hg38 / "hg38_subset.fa").read_bytes()}
    for path, data in sources.items():
        path.write_bytes(gzip.compress(data, compresslevel=1))
    # Other assemblies in their UCSC layout: panTro6 (whole genome in bigZips, no chromosomes/ folder) made of the
    # real panTro6 chr1 fragment, and an assembly published as .2bit only (as some older UCSC assemblies are).
    chimp = root / "goldenPath" / "panTro6" / "bigZips"
    chimp.mkdir(parents=True)
    chimp_fa = gzip.decompress((sample_data / "species/nuclear/chimp_panTro6_chr1_111982700-112009400.fa.gz")
                               .read_bytes())
    sources[chimp / "panTro6.fa.gz"] = chimp_fa
    chimp.joinpath("panTro6.fa.gz").write_bytes(gzip.compress(chimp_fa, compresslevel=1))
    old = root / "goldenPath" / "oldAsm1" / "bigZips"
    old.mkdir(parents=True)
    twobit = bytes.fromhex("4327411a") + bytes(12)  # a 2bit header (signature, version 0, no sequences)
    old.joinpath("oldAsm1.2bit").write_bytes(twobit)
    old.joinpath("md5sum.txt").write_text(f"{hashlib.md5(twobit).hexdigest()}  oldAsm1.2bit\n")
    for folder in (chroms, bigzips, chimp):
        folder.joinpath("md5sum.txt").write_text("".join(
            f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.name}\n" for p in sorted(folder.glob("*.fa.gz"))))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.root, server.log, server.override = root, [], {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/goldenPath", sources
    server.shutdown()


def _fetches(server, name):
    return [entry for entry in server.log if entry[0].endswith(name)]


def test_one_chromosome_is_verified_decompressed_indexed_and_cached(ucsc, tmp_path, sample_data):
    server, base, sources = ucsc
    fasta = download_genome("hg38", tmp_path, ["chr20"], base_url=base, progress=False, log=lambda *_: None)
    assert fasta == tmp_path / "hg38" / "chr20.fa"
    assert fasta.read_bytes() == (sample_data / "hg38" / "chr20_1-3000000.hg38.fa").read_bytes()
    assert fasta.with_name("chr20.fa.fai").is_file()
    before = len(_fetches(server, "chr20.fa.gz"))
    logs = []
    assert download_genome("hg38", tmp_path, ["chr20"], base_url=base, progress=False, log=logs.append) == fasta
    assert len(_fetches(server, "chr20.fa.gz")) == before and "cached" in logs[-1]


def test_several_chromosomes_and_the_whole_genome(ucsc, tmp_path, sample_data, capsys):
    server, base, sources = ucsc
    assert main(["download", "hg38", "--out", str(tmp_path), "--chroms", "chr2,chr20", "--base-url", base,
                 "--quiet"]) == 0
    fasta = tmp_path / "hg38" / "hg38.chr2_chr20.fa"
    assert capsys.readouterr().out.strip() == str(fasta)
    chroms = tmp_path / "hg38" / "chromosomes"
    assert fasta.read_bytes() == gzip.decompress((chroms / "chr2.fa.gz").read_bytes()) + \
        gzip.decompress((chroms / "chr20.fa.gz").read_bytes())
    whole = download_genome("hg38", tmp_path, None, base_url=base, progress=False, log=lambda *_: None)
    assert whole.name == "hg38.fa" and whole.read_bytes() == (sample_data / "hg38" / "hg38_subset.fa").read_bytes()


def test_an_interrupted_download_continues_with_a_range_request(ucsc, tmp_path):
    server, base, sources = ucsc
    remote = server.root / "goldenPath" / "hg38" / "chromosomes" / "chr2.fa.gz"
    part = tmp_path / "hg38" / "chromosomes" / "chr2.fa.gz.part"
    part.parent.mkdir(parents=True)
    half = remote.stat().st_size // 2
    part.write_bytes(remote.read_bytes()[:half])
    logs = []
    fasta = download_genome("hg38", tmp_path, ["chr2"], base_url=base, progress=False, log=logs.append)
    assert _fetches(server, "chr2.fa.gz")[-1] == ("/goldenPath/hg38/chromosomes/chr2.fa.gz", f"bytes={half}-", 206)
    assert any(f"continued a partial download from byte {half:,}" in line for line in logs)
    assert fasta.read_bytes() == sources[remote] and not part.exists()


def test_a_corrupted_download_fails_its_checksum(ucsc, tmp_path):
    server, base, _ = ucsc
    server.override["/goldenPath/hg38/chromosomes/chr20.fa.gz"] = gzip.compress(b">chr20\nACGT\n")
    try:
        with pytest.raises(DownloadError, match="md5 .* does not match md5sum.txt"):
            download_genome("hg38", tmp_path, ["chr20"], base_url=base, progress=False, log=lambda *_: None)
    finally:
        server.override.clear()
    assert not list((tmp_path / "hg38").rglob("chr20.fa*"))


def test_unknown_chromosome_and_offline(ucsc, tmp_path, capsys):
    server, base, _ = ucsc
    with pytest.raises(DownloadError, match="does not list chr99.fa.gz"):
        download_genome("hg38", tmp_path, ["chr99"], base_url=base, progress=False, log=lambda *_: None)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/goldenPath"
    assert main(["demo-shards", "--fasta", "hg38", "--out", str(tmp_path / "demo"), "--cache", str(tmp_path / "c"),
                 "--base-url", dead, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "could not get hg38 chr22" in err and "make demo GENOME=path/to/genome.fa" in err


def test_demo_shards_from_a_local_genome(sample_data, tmp_path):
    fasta = sample_data / "hg38" / "chr20_1-3000000.hg38.fa"
    out = demo_shards(tmp_path / "demo", fasta=fasta, progress=False, log=lambda *_: None)
    assert (out / "manifest.json").is_file()
    assert (tmp_path / "demo" / "demo-split.bed").read_text() == "chr20\t0\t2700000\ttrain\nchr20\t2700000\t3000000\tvalid\n"
    assert main(["inspect", str(out)]) == 0


def test_demo_shards_default_to_the_embedded_sample_offline(tmp_path):
    out = demo_shards(tmp_path / "demo", progress=False, log=lambda *_: None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["fasta"].endswith("data/sample/hg38/hg38_subset.fa.gz")
    assert (tmp_path / "demo" / "demo-split.bed").read_text().splitlines() == [
        "chr2\t0\t2099947\ttrain", "chr2\t2099947\t2333275\tvalid", "chr20\t0\t2700000\ttrain",
        "chr20\t2700000\t3000000\tvalid", "chrM\t0\t14912\ttrain", "chrM\t14912\t16569\tvalid"]
    assert not (tmp_path / "c").exists()  # nothing downloaded


def test_any_ucsc_assembly_by_name(ucsc, tmp_path, capsys):
    server, base, sources = ucsc
    assert main(["download", "panTro6", "--out", str(tmp_path), "--base-url", base, "--quiet"]) == 0
    fasta = tmp_path / "panTro6" / "panTro6.fa"
    assert capsys.readouterr().out.strip() == str(fasta)
    assert fasta.read_bytes() == sources[server.root / "goldenPath" / "panTro6" / "bigZips" / "panTro6.fa.gz"]
    assert _fetches(server, "/goldenPath/panTro6/bigZips/md5sum.txt")
    assert (tmp_path / "panTro6" / "panTro6.fa.fai").read_text().startswith("chr1:111982700-112009400\t26700\t")


@pytest.mark.parametrize("assembly, chroms, message", [
    ("gorGor9", None, "HTTP 404 Not Found; UCSC has no assembly 'gorGor9': check the name"),
    ("panTro6", ["chr1"], "UCSC publishes no per-chromosome files for panTro6"),
    ("oldAsm1", None, "serves oldAsm1.2bit only: fetch it and run `twoBitToFa oldAsm1.2bit oldAsm1.fa`"),
    ("../etc", None, "is not a UCSC assembly name"),
    ("hg", None, "is not a UCSC assembly name"),
])
def test_assemblies_ucsc_cannot_serve_are_clear_errors(ucsc, tmp_path, assembly, chroms, message):
    _, base, _ = ucsc
    with pytest.raises(ValueError) as err:
        download_genome(assembly, tmp_path, chroms, base_url=base, progress=False, log=lambda *_: None)
    assert message in str(err.value)
    assert not list(tmp_path.rglob("*.fa*"))
