"""A served model holds no admission state: serving never admits an id (deltas upsert rows), so
each table's count-min sketch (8 MB at the default width) is freed at load."""

import pyarrow as pa

from streamrec.config import load_config
from streamrec.data.movielens import load_ml100k
from streamrec.models.persistence import save_model
from streamrec.models.registry import build_model
from streamrec.serving.snapshot import Snapshot
from tests.serving.conftest import REPO


def test_a_served_model_frees_its_admission_sketches(tmp_path, ml100k):
    cfg = load_config(REPO / "examples" / "ml100k_deepfm.yaml")
    cfg.default_table.admit_min_count = 2
    sample = pa.Table.from_batches(load_ml100k().to_batches(2000)[:1])
    cfg.schema_ = cfg.schema.fit(sample)
    model = build_model(cfg.model, cfg.schema, cfg.table_configs()).train()
    model(cfg.schema.encode(sample))  # ids counted into the sketches
    trained = {n: t.memory_bytes()["overhead"] for n, t in model.dynamic_tables().items()}
    assert min(trained.values()) > 8_000_000  # 4 × 2^20 uint16 counters each
    served = Snapshot.load(save_model(tmp_path / "model", model, cfg))
    for name, table in served.model.dynamic_tables().items():
        assert table.memory_bytes()["overhead"] < 8_000_000, name
