"""`twistd skypty-dmsg`'s server key (#25 item 5): random, persisted, private."""

import hashlib
import json
import os
import stat

import pytest
from twisted.python import usage

from skypty.dmsg import tap
from skypty.keys import SecretKey


def parse(*args):
    options = tap.Options()
    options.parseOptions(["--discovery", "127.0.0.1:0", "--server", "127.0.0.1:0", *args])
    return options


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_default_key_is_not_the_public_seed(in_tmp, capsys):
    """It used to be sha256("skypty-dmsg"): anyone could post that server's entry."""
    options = parse()
    public = SecretKey(hashlib.sha256(b"skypty-dmsg").digest())
    assert options.sk != public
    path = in_tmp / tap.DEFAULT_KEY_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(path.read_text()) == {"sk": options.sk.hex(), "pk": options.sk.public_key.hex()}
    assert options.sk.public_key.hex() in capsys.readouterr().err  # its public key is printed
    again = parse()  # kept across restarts, and nothing printed the second time
    assert again.sk == options.sk
    assert capsys.readouterr().err == ""


def test_two_fresh_servers_get_different_keys(tmp_path):
    a = parse("--key-file", str(tmp_path / "a.json"))
    b = parse("--key-file", str(tmp_path / "b.json"))
    assert a.sk != b.sk


def test_a_key_file_others_can_read_is_made_private(tmp_path, capsys):
    path = tmp_path / "k.json"
    sk = SecretKey.generate()
    path.write_text(json.dumps({"sk": sk.hex(), "pk": sk.public_key.hex()}))
    os.chmod(path, 0o644)
    assert parse("--key-file", str(path)).sk == sk
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "made it private" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["", "{}", '{"sk": "zz"}', "[1]",
                                     json.dumps({"sk": "11" * 32, "pk": "02" + "33" * 32})])
def test_a_bad_key_file_is_one_clear_line(tmp_path, content):
    path = tmp_path / "k.json"
    path.write_text(content)
    with pytest.raises(usage.UsageError, match="not a skypty-dmsg key file"):
        parse("--key-file", str(path))


def test_a_missing_directory_is_refused(tmp_path):
    with pytest.raises(usage.UsageError, match="does not exist"):
        parse("--key-file", str(tmp_path / "nope" / "k.json"))


def test_seed_and_sk_still_work_for_tests(in_tmp):
    assert parse("--seed", "x").sk == SecretKey(hashlib.sha256(b"x").digest())
    sk = SecretKey.generate()
    assert parse("--sk", sk.hex()).sk == sk
    assert not (in_tmp / tap.DEFAULT_KEY_FILE).exists()  # no key file written for them
    with pytest.raises(usage.UsageError, match="not both"):
        parse("--sk", sk.hex(), "--seed", "x")
