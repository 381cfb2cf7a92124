"""The local CA (headwater.localca): first start, reuse, re-issue on a name change, near expiry, a
new CA or a broken pair; files and modes; name constraints; TLS handshakes in memory that a
client trusting the CA accepts and one that does not refuses; the config and CLI around it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ssl
import stat
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509

from headwater import cli
from headwater.clock import FakeClock
from headwater.config import TLS_AUTO, ConfigError, loads
from headwater.localca import (LocalCA, LocalCAError, TlsNames, cluster_tls_names, prepare, read_ca_info,
                               read_leaf_names, tls_context, uses_local_ca,
                               client_ssl_context)
from headwater.sealed import Sealer, SealedKeyMismatch

SECRET = b"s" * 32
NAMES = TlsNames.parse(["localhost", "127.0.0.1", "::1", "video.cdn.headwater.test", "cdn.headwater.test",
                        "*.cdn.headwater.test"])
DAY = 86400.0


def make_ca(folder: Path, clock: FakeClock | None = None, secret: bytes = SECRET) -> LocalCA:
    # The real time by default: the handshakes below check validity against OpenSSL's clock.
    return LocalCA(folder, Sealer(secret), label="unit", clock=clock or FakeClock(start=time.time()))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leaf_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def handshake(ca_file: Path | None, leaf_cert_file: Path, leaf_key_file: Path, server_name: str) -> str | None:
    """A TLS handshake over memory BIOs with a client trusting ``ca_file`` (else the system's
    store); returns the ALPN protocol chosen, or raises the client's ssl.SSLCertVerificationError."""
    client = ssl.create_default_context(cafile=str(ca_file)) if ca_file else ssl.create_default_context()
    return handshake_with(client, leaf_cert_file, leaf_key_file, server_name)


def handshake_with(client: ssl.SSLContext, leaf_cert_file: Path, leaf_key_file: Path, server_name: str) -> str | None:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(leaf_cert_file, leaf_key_file)
    server.set_alpn_protocols(["h2", "http/1.1"])
    client.set_alpn_protocols(["h2", "http/1.1"])
    bios = [ssl.MemoryBIO() for _ in range(4)]
    c = client.wrap_bio(bios[0], bios[1], server_hostname=server_name)
    s = server.wrap_bio(bios[2], bios[3], server_side=True)
    for _ in range(10):
        done = 0
        for end, incoming, outgoing in ((c, bios[0], bios[1]), (s, bios[2], bios[3])):
            try:
                end.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        bios[2].write(bios[1].read())
        bios[0].write(bios[3].read())
        if done == 2:
            return c.selected_alpn_protocol()
    raise AssertionError("the handshake did not finish")


def test_first_start_makes_the_ca_and_a_leaf_with_owner_only_keys(tmp_path: Path):
    ca = make_ca(tmp_path / "ca")
    info, leaf = ca.ensure(NAMES)
    assert info.created and leaf.issued
    assert info.cert_path == tmp_path / "ca" / "ca.pem" and leaf.cert == tmp_path / "ca" / "tls.pem"
    assert mode(ca.cert_path) == 0o644 and mode(leaf.cert) == 0o644
    assert mode(ca.key_path) == 0o600 and mode(leaf.key) == 0o600
    assert mode(tmp_path / "ca") == 0o755
    # The CA key is sealed: no PEM key in the file, and it opens only with the cluster secret.
    assert b"PRIVATE KEY" not in ca.key_path.read_bytes()
    with pytest.raises(SealedKeyMismatch):
        make_ca(tmp_path / "ca", secret=b"o" * 32).ensure(NAMES)

    root = leaf_cert(ca.cert_path)
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert root.not_valid_after_utc - root.not_valid_before_utc > dt.timedelta(days=3600)
    nc = root.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical and x509.DNSName("test") in nc.value.permitted_subtrees
    assert "unit" in info.subject and len(info.spki_sha256) == 44

    chain = leaf.cert.read_bytes()
    assert chain.count(b"BEGIN CERTIFICATE") == 2 and chain.endswith(ca.cert_path.read_bytes())
    cert = leaf_cert(leaf.cert)
    cert.verify_directly_issued_by(root)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == list(NAMES.dns)
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert sorted(p.name for p in (tmp_path / "ca").iterdir()) == [".lock", "ca-key.sealed", "ca.pem", "tls-key.pem",
                                                                   "tls.pem"]


def test_a_second_start_reuses_the_ca_and_the_leaf(tmp_path: Path):
    make_ca(tmp_path / "ca").ensure(NAMES)
    before = {p.name: p.read_bytes() for p in (tmp_path / "ca").iterdir()}
    info, leaf = make_ca(tmp_path / "ca").ensure(NAMES)
    assert not info.created and not leaf.issued
    assert {p.name: p.read_bytes() for p in (tmp_path / "ca").iterdir()} == before
    # ca.pem removed (or replaced) comes back from the sealed copy, byte for byte.
    (tmp_path / "ca" / "ca.pem").write_bytes(b"junk")
    make_ca(tmp_path / "ca").ensure(NAMES)
    assert (tmp_path / "ca" / "ca.pem").read_bytes() == before["ca.pem"]


def test_a_name_change_reissues_the_leaf_under_the_same_ca(tmp_path: Path):
    ca = make_ca(tmp_path / "ca")
    ca.ensure(NAMES)
    root = ca.cert_path.read_bytes()
    more = TlsNames.parse([*NAMES.dns, *map(str, NAMES.ips), "127.0.0.2", "www.cdn.headwater.test"])
    info, leaf = ca.ensure(more)
    assert leaf.issued and not info.created and ca.cert_path.read_bytes() == root
    assert read_leaf_names(tmp_path / "ca")[0] == more
    # A name removed is a change too: the leaf never keeps names the config dropped.
    assert ca.ensure(NAMES)[1].issued
    assert not ca.ensure(NAMES)[1].issued


def test_renewal_when_less_than_renew_days_are_left(tmp_path: Path):
    clock = FakeClock(start=1_800_000_000.0)
    ca = make_ca(tmp_path / "ca", clock)
    first = ca.ensure(NAMES)[1]
    left = first.not_after.timestamp() - clock.time()
    assert 396 * DAY < left <= 397 * DAY
    clock.advance(left - 31 * DAY)
    assert not ca.ensure(NAMES)[1].issued
    clock.advance(2 * DAY)  # 29 days left
    renewed = ca.ensure(NAMES)[1]
    assert renewed.issued and renewed.not_after.timestamp() - clock.time() > 396 * DAY
    # A CA near its own end is refused with the way out, not silently replaced (clients trust it).
    clock.advance(3650 * DAY)
    with pytest.raises(LocalCAError, match="expires on .*remove"):
        ca.ensure(NAMES)


def test_a_leaf_from_another_ca_or_a_broken_pair_is_reissued(tmp_path: Path):
    ca = make_ca(tmp_path / "ca")
    ca.ensure(NAMES)
    other = make_ca(tmp_path / "other")
    other.ensure(NAMES)
    # A leaf signed by another CA (an old CA's leaf after the CA was made anew).
    (tmp_path / "ca" / "tls.pem").write_bytes((tmp_path / "other" / "tls.pem").read_bytes())
    (tmp_path / "ca" / "tls-key.pem").write_bytes((tmp_path / "other" / "tls-key.pem").read_bytes())
    assert ca.ensure(NAMES)[1].issued
    leaf_cert(ca.leaf_cert_path).verify_directly_issued_by(leaf_cert(ca.cert_path))
    # A key that does not match the certificate (a crash between the two writes).
    (tmp_path / "ca" / "tls-key.pem").write_bytes((tmp_path / "other" / "tls-key.pem").read_bytes())
    assert ca.ensure(NAMES)[1].issued
    # A key others may read: issued anew, 0600.
    ca.leaf_key_path.chmod(0o644)
    assert ca.ensure(NAMES)[1].issued and mode(ca.leaf_key_path) == 0o600
    # Garbage in place of the certificate.
    ca.leaf_cert_path.write_bytes(b"not a certificate")
    assert ca.ensure(NAMES)[1].issued
    assert not ca.ensure(NAMES)[1].issued


def test_clients_trusting_the_ca_accept_every_name_and_others_refuse(tmp_path: Path):
    _, leaf = make_ca(tmp_path / "ca").ensure(NAMES)
    ca_file = tmp_path / "ca" / "ca.pem"
    for name in ("localhost", "127.0.0.1", "::1", "video.cdn.headwater.test", "cdn.headwater.test",
                 "seg.cdn.headwater.test"):  # the last through the wildcard
        assert handshake(ca_file, leaf.cert, leaf.key, name) == "h2"
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch|match"):
        handshake(ca_file, leaf.cert, leaf.key, "a.b.cdn.headwater.test")  # a wildcard covers one label
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ca_file, leaf.cert, leaf.key, "127.0.0.9")
    with pytest.raises(ssl.SSLCertVerificationError, match="self.signed|unable to get local issuer"):
        handshake(None, leaf.cert, leaf.key, "localhost")  # the system store does not know our CA


def test_name_constraints_cover_later_siblings_and_refuse_strangers(tmp_path: Path):
    public = TlsNames.parse(["localhost", "video.example.com", "203.0.113.7"])
    ca = make_ca(tmp_path / "ca")
    ca.ensure(public)
    root = leaf_cert(ca.cert_path)
    permitted = root.extensions.get_extension_for_class(x509.NameConstraints).value.permitted_subtrees
    assert x509.DNSName("example.com") in permitted  # the parent of the name configured at creation
    # A sibling added later fits and a handshake validates it (OpenSSL checks the constraints).
    later = TlsNames.parse(["localhost", "video.example.com", "img.example.com", "203.0.113.7", "10.1.2.3"])
    leaf = ca.ensure(later)[1]
    assert handshake(ca.cert_path, leaf.cert, leaf.key, "img.example.com") == "h2"
    # A name the CA may not certify is refused, naming it and the way out; nothing changes.
    before = ca.leaf_cert_path.read_bytes()
    with pytest.raises(LocalCAError, match=r"may not certify bank\.example\.org, 198\.51\.100\.1.*remove"):
        ca.ensure(TlsNames.parse(["localhost", "bank.example.org", "198.51.100.1"]))
    assert ca.leaf_cert_path.read_bytes() == before


def test_workers_starting_together_agree_on_one_ca_and_one_leaf(tmp_path: Path):
    results: list[tuple[bool, bool, bytes]] = []
    start = threading.Barrier(4)

    def one() -> None:
        start.wait()
        info, leaf = make_ca(tmp_path / "ca").ensure(NAMES)
        results.append((info.created, leaf.issued, leaf.cert.read_bytes()))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r[0] for r in results) == 1 and sum(r[1] for r in results) == 1
    assert len({r[2] for r in results}) == 1


@pytest.mark.parametrize("bad", ["", "a..b", "-a.test", "a_b.test", "*.test", "a.*.test", "é.test", "x" * 64 + ".test"])
def test_names_no_certificate_can_carry_are_refused(bad: str):
    with pytest.raises(LocalCAError, match="cannot be a certificate name"):
        TlsNames.parse([bad])


def test_names_are_normalised():
    names = TlsNames.parse(["LocalHost.", "127.0.0.1", "[::1]", "localhost", "10.0.0.1", "::1", "*.A.test"])
    assert names.dns == ("*.a.test", "localhost")
    assert [str(a) for a in names.ips] == ["10.0.0.1", "127.0.0.1", "::1"]


# --- the cluster: config, names, CLI ---------------------------------------------------------------

CLUSTER = """
[cluster]
name = "tls-unit"
data_dir = "var"

[[distributions]]
name = "video"
hostnames = ["video.cdn.headwater.test", "example.test"]
origin = "http://127.0.0.1:1"

[[edge]]
id = "pop-1"
tier = "pop"
port = 18081
admin_port = 19081
tls_port = 18441
{tls}
lat = 1.0
lon = 2.0

[[edge]]
id = "pop-2"
tier = "pop"
host = "127.0.0.2"
port = 18082
admin_port = 19082
lat = 1.0
lon = 2.0
"""


def cluster(tmp_path: Path, tls: str = 'tls_cert = "auto"\ntls_key = "auto"'):
    path = tmp_path / "cluster.toml"
    path.write_text(CLUSTER.format(tls=tls))
    return loads(path.read_text(), path=str(path), env={}), path


def test_auto_in_cluster_toml_names_and_the_secret(tmp_path: Path):
    cfg, _ = cluster(tmp_path)
    pop1, pop2 = cfg.edge
    # (every edge daemon needs the secret: it signs and checks purges; the sealed CA key too)
    assert pop1.tls_cert == pop1.tls_key == TLS_AUTO and pop1.needs_cluster_secret
    assert pop2.tls_cert is None
    assert uses_local_ca(cfg)
    names = cluster_tls_names(cfg)
    # pop-2 has no TLS listener: its address is not in the leaf; the distributions' names are,
    # with the parent domain and its wildcard (but no wildcard over a top-level domain).
    assert names.dns == ("*.cdn.headwater.test", "cdn.headwater.test", "example.test", "localhost",
                         "video.cdn.headwater.test")
    assert [str(a) for a in names.ips] == ["127.0.0.1", "::1"]


@pytest.mark.parametrize("tls,key,message", [
    ('tls_cert = "auto"\ntls_key = "tls/key.pem"', "edge[0].tls_key", 'must be "auto" too'),
    ('tls_cert = "auto"', "edge[0].tls_key", 'must be "auto" too'),
    ("", "edge[0].tls_port", 'both "auto"'),
])
def test_auto_config_errors_name_the_key(tmp_path: Path, tls: str, key: str, message: str):
    with pytest.raises(ConfigError, match=message) as e:
        cluster(tmp_path, tls)
    assert e.value.key == key and e.value.line is not None


def test_prepare_and_the_ca_command(tmp_path: Path, capsys):
    cfg, path = cluster(tmp_path)
    assert cli.main(["ca", "path", "-c", str(path)]) == cli.EXIT_FAILED  # not made yet
    assert "headwater up" in capsys.readouterr().err
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "cluster.secret").write_text("ab" * 32 + "\n")
    (tmp_path / "var" / "cluster.secret").chmod(0o600)
    info, leaf = prepare(cfg)
    assert info.created and leaf.issued and leaf.names == cluster_tls_names(cfg)
    assert read_ca_info(tmp_path / "var" / "ca") == dataclasses.replace(info, created=False)
    assert cli.main(["ca", "path", "-c", str(path)]) == cli.EXIT_OK
    assert capsys.readouterr().out.strip() == str(tmp_path / "var" / "ca" / "ca.pem")
    assert cli.main(["ca", "show", "-c", str(path)]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert info.sha256 in out and info.spki_sha256 in out and "video.cdn.headwater.test" in out
    assert prepare(cfg)[1].issued is False  # `up` again: nothing new


def test_prepare_does_nothing_without_an_auto_listener(tmp_path: Path):
    for name in ("c.pem", "k.pem"):
        (tmp_path / name).write_text("operator's own file")
    cfg, _ = cluster(tmp_path, 'tls_cert = "c.pem"\ntls_key = "k.pem"')
    assert cfg.edge[0].tls_cert == str(tmp_path / "c.pem")
    assert not uses_local_ca(cfg) and prepare(cfg) is None
    assert not (tmp_path / "var" / "ca").exists()


def test_tls_context_for_auto_files_and_none(tmp_path: Path):
    cfg, _ = cluster(tmp_path)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "cluster.secret").write_text("cd" * 32 + "\n")
    (tmp_path / "var" / "cluster.secret").chmod(0o600)
    assert tls_context(cfg, None, None) is None
    ctx = tls_context(cfg, TLS_AUTO, TLS_AUTO)  # a daemon started without `up` issues what it needs
    assert isinstance(ctx, ssl.SSLContext) and ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    leaf = tmp_path / "var" / "ca"
    ctx = tls_context(cfg, str(leaf / "tls.pem"), str(leaf / "tls-key.pem"))  # the operator's own files
    assert isinstance(ctx, ssl.SSLContext)
    with pytest.raises(ssl.SSLError):
        tls_context(cfg, str(leaf / "tls.pem"), str(tmp_path / "var" / "cluster.secret"))


def test_a_client_context_trusts_the_local_ca_beside_the_public_ones(tmp_path: Path):
    cfg, _ = cluster(tmp_path)
    assert client_ssl_context(cfg) is True  # no local CA yet: httpx's default
    _, leaf = make_ca(tmp_path / "var" / "ca").ensure(NAMES)
    ctx = client_ssl_context(cfg)
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    stats = ctx.cert_store_stats()
    assert stats["x509_ca"] > 1  # certifi's public roots and ours
    assert handshake_with(ctx, leaf.cert, leaf.key, "video.cdn.headwater.test") == "h2"
