"""Access settings: checked at start in clear words, turned into yt-dlp's own options, and credentials
kept out of every text."""

from __future__ import annotations

import stat

import pytest

from cosmo_data.schemas.config import DownloadConfig
from cosmo_data.stages.download_pacing import Identities
from cosmo_data.stages.ytdlp_access import (
    AccessError,
    access_params,
    check_access,
    proxy_label,
    redact,
    redacted_settings,
    worker_cookies,
)

PROXY = "http://alice:s3cret-pw@10.0.0.7:3128"


def cookies(tmp_path, value="AbCdEf123456"):
    path = tmp_path / "cookies.txt"
    path.write_text(f"# Netscape HTTP Cookie File\n.youtube.com\tTRUE\t/\tTRUE\t0\tSID\t{value}\n")
    return path


def test_an_unknown_ytdlp_option_stops_the_build_at_start():
    with pytest.raises(AccessError, match="yt-dlp has no option sleep_intervall"):
        check_access(DownloadConfig(ytdlp_options={"sleep_intervall": 5}))
    with pytest.raises(AccessError, match="proxy is set by the download itself"):
        check_access(DownloadConfig(ytdlp_options={"proxy": "http://x:1"}))
    check_access(DownloadConfig(ytdlp_options={"geo_bypass": True, "http_chunk_size": 10485760}))


def test_a_missing_js_runtime_and_an_unreadable_cookies_file_are_clear_errors(tmp_path):
    with pytest.raises(AccessError, match="deno-not-here is not installed or not on PATH"):
        check_access(DownloadConfig(js_runtime="deno:deno-not-here"))
    with pytest.raises(AccessError, match="cookies_file: cannot read"):
        check_access(DownloadConfig(cookies_file=str(tmp_path / "none.txt")))
    with pytest.raises(AccessError, match="not a proxy URL"):
        check_access(DownloadConfig(proxies=["ftp://alice:s3cret-pw@host"]))


def test_settings_become_ytdlp_options(tmp_path):
    config = DownloadConfig(
        player_clients=["tv", "web_safari"],
        po_token_provider_url="http://127.0.0.1:4416",
        sleep_requests_s=1.5,
        sleep_before_media_s=4,
        rate_limit_bytes_s=5_000_000,
        js_runtime="deno",
        extractor_args={"youtube": {"lang": ["en"]}},
        ytdlp_options={"geo_bypass": True},
    )

    params = access_params(config, proxy=PROXY, cookies_path=tmp_path / "c.txt")

    assert params["extractor_args"] == {
        "youtube": {"lang": ["en"], "player_client": ["tv", "web_safari"]},
        "youtubepot-bgutilhttp": {"base_url": ["http://127.0.0.1:4416"]},
    }
    assert (params["sleep_interval_requests"], params["sleep_interval"], params["ratelimit"]) == (1.5, 4, 5_000_000)
    assert (params["js_runtimes"], params["proxy"], params["cookiefile"]) == (
        {"deno": {}},
        PROXY,
        str(tmp_path / "c.txt"),
    )
    assert params["geo_bypass"] is True
    assert access_params(DownloadConfig(), proxy=None, cookies_path=None)["proxy"] == ""


def test_credentials_never_leave_in_a_text(tmp_path):
    config = DownloadConfig(proxies=[PROXY], cookies_file=str(cookies(tmp_path)))
    text = f"Unable to connect to proxy {PROXY}; sent cookie SID=AbCdEf123456; again s3cret-pw"

    cleaned = redact(text, config)

    assert "s3cret-pw" not in cleaned and "alice" not in cleaned and "AbCdEf123456" not in cleaned
    assert proxy_label(PROXY) == "http://10.0.0.7:3128"
    settings = redacted_settings({"download": config.model_dump(mode="json")}, config)
    assert settings["download"]["proxies"] == ["http://10.0.0.7:3128"]


def test_each_worker_gets_its_own_private_cookies_copy(tmp_path):
    config = DownloadConfig(cookies_file=str(cookies(tmp_path)))

    copy = worker_cookies(config, tmp_path / "state")

    assert copy.read_text() == (tmp_path / "cookies.txt").read_text() and copy != tmp_path / "cookies.txt"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    copy.write_text("written back by yt-dlp")
    assert worker_cookies(config, tmp_path / "state").read_text() == "written back by yt-dlp"


def test_a_struck_identity_sleeps_longer_each_time_and_its_worker_moves_to_the_next(tmp_path):
    config = DownloadConfig(proxies=["http://a:1", "http://b:2"], identity_sleep_s=100, identity_max_sleep_s=250)
    identities = Identities(config, tmp_path)
    first = identities.take(0).proxy

    assert [identities.strike(first), identities.strike(first), identities.strike(first)] == [100, 200, 250]
    other = identities.take(0)
    assert other.awake and other.proxy != first
    identities.strike(other.proxy)
    asleep = identities.take(0)
    assert not asleep.awake and 90 < asleep.wait_s <= 100
    identities.clear(first)  # a success resets the strikes, not the current sleep
    assert identities.strike(first) == 100


def test_an_identity_paces_its_starts_across_workers(tmp_path):
    config = DownloadConfig()
    one, two = Identities(config, tmp_path), Identities(config, tmp_path)  # two workers of one node

    waits = [one.take(15).wait_s, two.take(15).wait_s, one.take(15).wait_s]

    assert waits[0] == pytest.approx(0, abs=0.5)
    assert waits[1] == pytest.approx(15, abs=0.5) and waits[2] == pytest.approx(30, abs=0.5)
