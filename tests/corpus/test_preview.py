"""The preview page, opened in real headless Chromium.

Chromium is driven over the DevTools protocol through --remote-debugging-pipe (fds 3 and 4, messages
separated by NUL bytes): no port to race for and no client library. The page is loaded, its images'
naturalWidth read in the page, console and network events collected, and a PNG screenshot taken.
Set UPDATE_DOCS_PREVIEW=1 to also write that screenshot to docs/preview.png.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from corpus_factory import Corpus, build_corpus, failed_record, ok_record, write_corpus
from PIL import Image, ImageStat

from cosmo_data.corpus.preview import PreviewResult, format_time, write_preview
from cosmo_data.corpus.query import QueryError
from cosmo_data.schemas.records import DOWNLOAD_FAILED

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[2]
NO_CHROMIUM = "chromium is not installed (apt install chromium)"
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=NO_CHROMIUM)

HOSTILE = '<script>document.title="pwned"</script><img src=x onerror="document.title=\'pwned\'"> & "quotes"'

# Evaluated in the page after load: what the tests assert on.
PAGE_FACTS = """JSON.stringify({
  title: document.title,
  scripts: document.scripts.length,
  images: Array.from(document.images).map(i => ({complete: i.complete, width: i.naturalWidth,
                                                  data: i.src.startsWith('data:image/')})),
  documents: Array.from(document.querySelectorAll('article.doc')).map(a => ({
    id: a.querySelector('h2').textContent,
    items: Array.from(a.querySelectorAll('.stream > li')).map(li => li.classList.contains('image')
      ? {image: li.querySelector('figcaption').textContent}
      : {sentence: li.querySelector('.text').textContent, time: li.querySelector('.time').textContent,
         source: li.querySelector('.badge').textContent})})),
  failed: Array.from(document.querySelectorAll('section tbody tr')).map(tr =>
    Array.from(tr.cells).map(td => td.textContent)),
})"""


class Chromium:
    """Headless Chromium with a DevTools session on one page, over the debugging pipe."""

    def __init__(self, profile_dir: Path, width: int = 1000, height: int = 1400):
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def attach_pipes() -> None:  # runs in the child: Chromium reads fd 3 and writes fd 4
            read_end = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD, 10)
            write_end = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD, 10)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile_dir}",
                "about:blank",
            ],
            preexec_fn=attach_pipes,
            pass_fds=(3, 4),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=True,
        )

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._from_browser], [], [], remaining)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise ConnectionError(f"Chromium closed the pipe (exit code {self.process.poll()})")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, *, session: bool = False, timeout: float = 30) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._receive(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def open(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", {"url": url}, session=True)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"]["value"]

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"}, session=True)["data"])

    def console_errors(self) -> list[str]:
        errors = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                errors.append(params["exceptionDetails"].get("text", "exception"))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                errors.append(params["entry"]["text"])
        return errors

    def requested_urls(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (TimeoutError, ConnectionError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(NO_CHROMIUM)
    chromium = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("preview") / "corpus", n_ok=4, n_failed=3, videos_per_group=3)


def assert_not_blank(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size == (1000, 1400)
    assert max(ImageStat.Stat(image).stddev) > 20, "screenshot is (nearly) one flat colour"
    assert len(image.getcolors(maxcolors=1 << 20) or []) > 200
    return image


@needs_chromium
def test_page_renders_in_chromium_with_every_image_and_no_errors(corpus, browser, tmp_path, monkeypatch):
    monkeypatch.chdir(corpus.out.parent)  # the page names the corpus as given: "corpus", as a user would
    result = write_preview(Path("corpus"), tmp_path / "preview.html")
    assert (result.documents, result.images, result.missing_images) == (4, 12, 0)
    assert (result.failed_listed, result.failed_total) == (3, 3)

    browser.open(result.path.as_uri())
    facts = json.loads(browser.evaluate(PAGE_FACTS))
    assert len(facts["images"]) == result.images
    assert all(i["complete"] and i["width"] > 0 and i["data"] for i in facts["images"]), facts["images"]
    assert browser.console_errors() == []
    # Nothing is fetched but the page itself; images are inline.
    assert [url for url in browser.requested_urls() if not url.startswith("data:")] == [result.path.as_uri()]
    assert [d["id"] for d in facts["documents"]] == [r.video_id for r in corpus.ok_records]
    assert [row[2] for row in facts["failed"]] == ["download_failed", "decode_failed", "invalid_source"]

    png = browser.screenshot()
    assert_not_blank(png)
    (tmp_path / "preview.png").write_bytes(png)
    if os.environ.get("UPDATE_DOCS_PREVIEW"):
        (REPO / "docs").mkdir(exist_ok=True)
        (REPO / "docs" / "preview.png").write_bytes(png)


@needs_chromium
def test_sentences_run_in_time_order_with_each_image_before_its_matched_sentence(corpus, browser, tmp_path):
    result = write_preview(corpus.out, tmp_path / "preview.html", n=2)
    browser.open(result.path.as_uri())
    shown = json.loads(browser.evaluate(PAGE_FACTS))["documents"]
    assert len(shown) == 2
    for record, page in zip(corpus.ok_records, shown):
        document = record.document
        by_time = sorted(range(len(document.sentences)), key=lambda i: (document.sentences[i].start_s, i))
        expected: list[dict] = []
        for i in by_time:
            for k, j in zip(document.image_frames, document.matched_text_index):
                if j == i:
                    frame = record.frames[k]
                    expected.append({"image": f"keyframe {frame.frame_idx} at {format_time(frame.t_s)}"})
            sentence = document.sentences[i]
            expected.append(
                {
                    "sentence": sentence.text,
                    "source": "ASR" if sentence.source == "asr" else "caption",
                    "time": f"{format_time(sentence.start_s)}–{format_time(sentence.end_s)}",
                }
            )
        for item, want in zip(page["items"], expected, strict=True):
            if "image" in want:
                assert item["image"].startswith(want["image"] + " · sim ")
            else:
                assert item == want


@needs_chromium
def test_text_from_the_data_is_escaped_never_markup(tmp_path, browser):
    hostile = ok_record("vid_hostile", 0, 0)
    hostile.source = HOSTILE
    hostile.document.sentences[1].text = HOSTILE
    failed = failed_record("bad_hostile", 1, HOSTILE, DOWNLOAD_FAILED, f"ERROR: {HOSTILE}\nsecond line")
    out = write_corpus(tmp_path / "out", [hostile, failed]).out
    result = write_preview(out, tmp_path / "preview.html")
    page = result.path.read_text(encoding="utf-8")
    assert "<script" not in page and "<img src=x" not in page

    browser.open(result.path.as_uri())
    facts = json.loads(browser.evaluate(PAGE_FACTS))
    assert facts["title"] != "pwned" and facts["scripts"] == 0
    assert len(facts["images"]) == len(hostile.frames)  # no <img> smuggled in
    sentences = [item.get("sentence") for item in facts["documents"][0]["items"]]
    assert HOSTILE in sentences
    assert facts["failed"] == [["bad_hostile", HOSTILE, DOWNLOAD_FAILED, "", f"ERROR: {HOSTILE}\nsecond line"]]
    assert browser.console_errors() == []


def test_where_selects_videos_by_sql(corpus, tmp_path):
    result = write_preview(corpus.out, tmp_path / "es.html", where="language = 'es'")
    page = result.path.read_text(encoding="utf-8")
    assert (result.documents, result.failed_total) == (1, 0)
    assert 'id="doc-vid003_d"' in page and 'id="doc-vid000_a"' not in page
    result = write_preview(corpus.out, tmp_path / "failed.html", where="status = 'decode_failed'")
    assert (result.documents, result.failed_listed) == (0, 1)
    assert "moov atom not found" in result.path.read_text(encoding="utf-8")


def test_n_limits_the_documents_shown(corpus, tmp_path):
    result = write_preview(corpus.out, tmp_path / "two.html", n=2)
    assert result.documents == 2
    assert re.findall(r'<article class="doc" id="doc-([^"]+)"', result.path.read_text()) == ["vid000_a", "vid001_b"]
    assert "2 documents" in str(result)


def test_bad_where_raises_query_error(corpus, tmp_path):
    with pytest.raises(QueryError, match="not found"):
        write_preview(corpus.out, tmp_path / "x.html", where="no_such_column = 1")
    assert not (tmp_path / "x.html").exists()


def test_keyframes_missing_from_the_shards_are_shown_as_missing(tmp_path):
    corpus = build_corpus(tmp_path / "out", n_ok=2, n_failed=0)
    for tar in (corpus.out / "shards" / "native").glob("*.tar"):
        tar.unlink()
    result: PreviewResult = write_preview(corpus.out, tmp_path / "preview.html")
    assert (result.images, result.missing_images) == (0, 6)
    assert result.path.read_text().count("image not found in the native shards") == 6


def test_format_time():
    assert format_time(0) == "0:00.0"
    assert format_time(75.34) == "1:15.3"
    assert format_time(3725.0) == "1:02:05.0"
    assert format_time(None) == "?"


@pytest.mark.slow
@needs_chromium
def test_a_real_build_previews_with_every_keyframe(demo_corpus, browser, tmp_path):
    result = write_preview(demo_corpus, tmp_path / "real.html")
    assert result.documents > 0 and result.images > 0 and result.missing_images == 0
    browser.open(result.path.as_uri())
    facts = json.loads(browser.evaluate(PAGE_FACTS))
    assert len(facts["images"]) == result.images
    assert all(i["complete"] and i["width"] > 0 for i in facts["images"]), facts["images"]
    assert browser.console_errors() == []
    assert_not_blank(browser.screenshot())
