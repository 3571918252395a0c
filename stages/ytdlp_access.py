"""How yt-dlp reaches the platform: cookies, proxy, sleeps, player clients, PO tokens, JS runtime, and any
other YoutubeDL option by its own name (download.* in the config; docs/YOUTUBE.md).

Checked once when the build starts (check_access): a cookies file that cannot be read, a JS runtime that
is not installed or an option yt-dlp does not have would otherwise fail every video in the same way, or
(an unknown option) be ignored by yt-dlp without a word.

Credentials (a cookie's value, a proxy's user:password) never leave this module in a text: redact()
removes them from every message that reaches a row, a log line or build.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yt_dlp

from cosmo_data.schemas.config import DownloadConfig
from cosmo_data.schemas.redact import redact as redact_urls

# Options the download sets itself from typed settings; ytdlp_options may not override them.
OWN_OPTIONS = frozenset(
    {"cookiefile", "proxy", "logger", "progress_hooks", "match_filter", "paths", "outtmpl", "extractor_args"}
)
JS_RUNTIMES = ("deno", "node", "bun", "quickjs")
# Recorded in build.json and on every downloaded or failed videos row.
YTDLP_VERSION: str = yt_dlp.version.__version__
# download.* settings about reaching the platform, not about what is downloaded: a resumed build may
# change them (another proxy, fresh cookies, other sleeps).
ACCESS_SETTINGS = (
    "cookies_file",
    "proxies",
    "youtube_interval_s",
    "identity_sleep_s",
    "identity_max_sleep_s",
    "identity_give_up_s",
    "sleep_requests_s",
    "sleep_before_media_s",
    "rate_limit_bytes_s",
    "player_clients",
    "po_token_provider_url",
    "js_runtime",
    "extractor_args",
    "ytdlp_options",
    "breaker_window",
    "breaker_share",
)


class AccessError(Exception):
    """A download setting that cannot work; the build stops before its first video."""


def ytdlp_option_names() -> frozenset[str]:
    """Every option YoutubeDL documents: its docstring lists them as `name: description`, and the
    downloader's as a comma-separated paragraph."""
    doc = yt_dlp.YoutubeDL.__doc__ or ""
    names = set(re.findall(r"^ {4}(\w+):", doc, re.MULTILINE))
    downloader = re.search(r"used by\s+the downloader[^:]*:(.*?)\.\n", doc, re.DOTALL)
    if downloader:
        names.update(re.findall(r"\w+", downloader.group(1)))
    return frozenset(names)


def check_access(config: DownloadConfig) -> None:
    """Raise AccessError when a download setting cannot work, in words that say which and why."""
    unknown = sorted(set(config.ytdlp_options) - ytdlp_option_names())
    if unknown:
        raise AccessError(f"download.ytdlp_options: yt-dlp has no option {', '.join(unknown)} (see its YoutubeDL docs)")
    own = sorted(set(config.ytdlp_options) & OWN_OPTIONS)
    if own:
        raise AccessError(f"download.ytdlp_options: {', '.join(own)} is set by the download itself (use download.*)")
    if config.cookies_file is not None:
        path = Path(config.cookies_file).expanduser()
        if not path.is_file() or not os.access(path, os.R_OK):
            raise AccessError(f"download.cookies_file: cannot read {path}")
        head = path.read_text(encoding="utf-8", errors="replace")[:4096]
        if head.strip() and not head.lstrip().startswith("#") and "\t" not in head:
            raise AccessError(f"download.cookies_file: {path} is not a Netscape cookies file (tab-separated)")
    for proxy in config.proxies:
        parts = urlsplit(proxy)
        if parts.scheme not in ("http", "https", "socks4", "socks4a", "socks5", "socks5h") or not parts.hostname:
            raise AccessError(
                f"download.proxies: {redact(proxy, config)} is not a proxy URL (http://host:port, socks5://...)"
            )
    if config.js_runtime is not None:
        name, _, binary = config.js_runtime.partition(":")
        if name not in JS_RUNTIMES:
            raise AccessError(f"download.js_runtime: {name} is not one of {', '.join(JS_RUNTIMES)}")
        if not shutil.which(binary or name):
            raise AccessError(
                f"download.js_runtime: {binary or name} is not installed or not on PATH; YouTube's player needs "
                "it (install deno: https://deno.land, or set download.js_runtime: null)"
            )


def js_runtime_missing(config: DownloadConfig) -> str | None:
    """A warning for a build with YouTube sources and no JS runtime yt-dlp could use, else None."""
    if config.js_runtime is None and not any(shutil.which(name) for name in JS_RUNTIMES):
        return (
            "no JavaScript runtime (deno) found: yt-dlp needs one for YouTube's web player, and without it "
            "many formats are missing; install deno or set download.js_runtime"
        )
    return None


def access_params(config: DownloadConfig, *, proxy: str | None, cookies_path: Path | None) -> dict[str, Any]:
    """The YoutubeDL options for one identity (proxy, cookies copy); the download adds its own."""
    extractor_args = {key: dict(value) for key, value in config.extractor_args.items()}
    youtube = extractor_args.setdefault("youtube", {})
    if config.player_clients:
        youtube.setdefault("player_client", list(config.player_clients))
    if config.po_token_provider_url:
        extractor_args.setdefault("youtubepot-bgutilhttp", {})["base_url"] = [config.po_token_provider_url]
    if not youtube:
        del extractor_args["youtube"]
    params: dict[str, Any] = dict(config.ytdlp_options)
    params["extractor_args"] = extractor_args
    if config.sleep_requests_s:
        params["sleep_interval_requests"] = config.sleep_requests_s
    if config.sleep_before_media_s:
        params["sleep_interval"] = config.sleep_before_media_s
    if config.rate_limit_bytes_s:
        params["ratelimit"] = config.rate_limit_bytes_s
    if config.js_runtime:
        name, _, binary = config.js_runtime.partition(":")
        params["js_runtimes"] = {name: {"path": binary} if binary else {}}
    # An empty proxy string makes yt-dlp ignore any proxy of the environment: this machine's address.
    params["proxy"] = proxy or ""
    if cookies_path is not None:
        params["cookiefile"] = str(cookies_path)
    return params


def worker_cookies(config: DownloadConfig, work_root: Path) -> Path | None:
    """This worker's copy of the cookies file (made once; yt-dlp writes it back after every video, so
    workers sharing one file would overwrite each other's refreshed cookies), private to the user."""
    if config.cookies_file is None:
        return None
    source = Path(config.cookies_file).expanduser()
    # Named by the file's identity too: a fresh export (or another build's file) is never served a stale
    # copy left by an earlier worker that had the same process id.
    stamp = source.stat()
    version = hashlib.sha256(f"{source.resolve()}|{stamp.st_mtime_ns}|{stamp.st_size}".encode()).hexdigest()[:12]
    copy = Path(work_root) / f"cosmo-cookies-{os.getpid()}-{version}" / "cookies.txt"
    if not copy.is_file():
        copy.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.copyfile(source, copy)
        copy.chmod(0o600)
    return copy


def cookie_values(config: DownloadConfig) -> list[str]:
    """The values of the cookies file (its 7th tab-separated column), to be kept out of every text."""
    if config.cookies_file is None:
        return []
    try:
        lines = Path(config.cookies_file).expanduser().read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    values = []
    for line in lines:
        fields = line.split("\t")
        if len(fields) >= 7 and not line.startswith("# ") and len(fields[6]) >= 4:
            values.append(fields[6])
    return values


def redact(text: str, config: DownloadConfig) -> str:
    """text without any URL's credentials (schemas.redact), any proxy's user:password or any cookie value of the
    configured cookies file."""
    text = redact_urls(text)
    for proxy in config.proxies:
        parts = urlsplit(proxy)
        for secret in (parts.password, parts.username):
            if secret:
                text = text.replace(secret, "***")
    for value in sorted(cookie_values(config), key=len, reverse=True):
        text = text.replace(value, "***")
    return text


def redacted_settings(settings: dict[str, Any], config: DownloadConfig) -> dict[str, Any]:
    """A config dump as it may be written down (run.json): proxies by their labels, every text redacted."""
    download = dict(settings.get("download") or {})
    download["proxies"] = [proxy_label(proxy) for proxy in config.proxies]
    for key in ("ytdlp_options", "extractor_args", "po_token_provider_url"):
        if download.get(key):
            download[key] = json.loads(redact(json.dumps(download[key]), config))
    return {**settings, "download": download}


def proxy_label(proxy: str | None) -> str:
    """A proxy as it may be shown: scheme, host and port, never its credentials."""
    if not proxy:
        return "direct"
    parts = urlsplit(proxy)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
