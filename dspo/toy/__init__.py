"""Procedural toy world: captions, renders with web-quality defects, an analytic oracle, pairs.

No hub model or dataset can be downloaded in the default preset, so this package stands in for
Pick-a-Pic and PickScore. Captions come from a small grammar (colour, shape, position, size,
background); images are rendered procedurally, with random defects that mimic scraped web data;
an analytic oracle scores any RGB image against any caption from pixels alone (an alignment part
and an aesthetic part). Preference pairs are two renders of one caption labelled by
Bradley-Terry sampling from the oracle and written in the Pick-a-Pic v2 parquet schema.

- `dspo.toy.scenes`: the vocabulary, `Scene`, captions (write and parse), the scene split;
- `dspo.toy.render`: rendering scenes, with jitter and defects;
- `dspo.toy.oracle`: the oracle's scores and checks, and `ToyOracleReward` (its parts as
  reward models, kind ``toy_oracle`` in `dspo.rewards`);
- `dspo.toy.pairs`: JPEG bytes, preference pairs, unlabelled renders, a preview of pairs;
- `dspo.toy.world`: `ToyWorldConfig`, the files `build_world` writes, the editing set.

The entry points of the CLI and of pre-training are re-exported here.
"""

from dspo.toy.pairs import preview_pairs, sample_unlabelled
from dspo.toy.world import ToyWorldConfig, build_world

__all__ = ["ToyWorldConfig", "build_world", "preview_pairs", "sample_unlabelled"]
