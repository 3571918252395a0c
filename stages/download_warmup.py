"""Imported, for what its import does, by the forkserver that forks each video's download and decode
children (VideoStage.setup -> download.prepare_children): yt-dlp's first-use work is done there once,
and every forked child inherits it instead of doing it again.

yt-dlp tries each extractor's URL pattern on a URL in turn (~1,750 of them), compiling each on first
use and keeping it on the extractor's class, and imports an extractor's module when one is picked. A
direct link to a file, which only the generic extractor takes, meets every pattern: in each fresh child
that was 0.4-0.5 CPU-s of a 0.1 CPU-s download, and 2-3 s of wall time on 2 busy cores.
"""

from cosmo_data.stages.download import warm_up_ytdlp

warm_up_ytdlp()
