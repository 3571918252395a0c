"""redact: a source's credentials (userinfo, presigned query parameters) never reach what is written."""

from __future__ import annotations

import pytest

from cosmo_data.schemas.redact import redact, redact_url

PRESIGNED_S3 = (
    "https://bucket.s3.amazonaws.com/videos/v.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLE%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z"
    "&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Security-Token=SESSIONTOKEN&X-Amz-Signature=f00dcafe"
)


@pytest.mark.parametrize(
    "url, expected",
    [
        ("https://user:hunter2@example.com/v.mp4", "https://example.com/v.mp4"),
        ("https://user@example.com:8080/v.mp4", "https://example.com:8080/v.mp4"),
        ("s3://AKIAEXAMPLE:SECRETKEY@bucket/corpus", "s3://bucket/corpus"),
        (PRESIGNED_S3, "https://bucket.s3.amazonaws.com/videos/v.mp4"),
        (
            "https://storage.googleapis.com/b/v.mp4?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Signature=abc123",
            "https://storage.googleapis.com/b/v.mp4",
        ),
        # CloudFront: the Expires goes with the signature (it changes with each signing).
        (
            "https://d1.cloudfront.net/v.mp4?Expires=1700&Signature=abc&Key-Pair-Id=K2&res=720",
            "https://d1.cloudfront.net/v.mp4?res=720",
        ),
        (
            "https://acct.blob.core.windows.net/c/v.mp4?sv=2022&sig=SIGNATURE%3D",
            "https://acct.blob.core.windows.net/c/v.mp4?sv=2022",
        ),
        ("https://cdn.example/v.mp4?token=abc&api_key=k", "https://cdn.example/v.mp4"),
    ],
)
def test_credentials_leave_a_url(url, expected):
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=10",
        "http://127.0.0.1:8000/videos/a%20b.mp4",
        "https://example.com/v.mp4?expires=never",  # an Expires without a signature is no credential
        "s3://bucket/prefix",
    ],
)
def test_a_url_without_credentials_is_kept_as_it_is(url):
    assert redact_url(url) == url


def test_every_url_in_a_message_is_redacted_and_the_rest_kept():
    message = f"HTTP Error 403 for 'https://u:hunter2@h.example/v.mp4' (then {PRESIGNED_S3}). Giving up."
    assert redact(message) == (
        "HTTP Error 403 for 'https://h.example/v.mp4' (then https://bucket.s3.amazonaws.com/videos/v.mp4). Giving up."
    )
    assert redact(None) is None and redact("no url here: user:pw") == "no url here: user:pw"


def test_re_signed_links_of_one_object_read_the_same():
    again = PRESIGNED_S3.replace("f00dcafe", "0ddba11").replace("20260101T000000Z", "20260102T000000Z")
    assert redact(again) == redact(PRESIGNED_S3)


def test_userinfo_outside_a_url_is_dropped_and_an_email_kept():
    # yt-dlp's info dict carries the netloc alone as webpage_url_domain (found by a real build's tables).
    info = '{"webpage_url_domain": "reader:hunter2@127.0.0.1:39751", "uploader": "bob@example.com"}'
    assert redact(info) == '{"webpage_url_domain": "127.0.0.1:39751", "uploader": "bob@example.com"}'
