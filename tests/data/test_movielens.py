import numpy as np
import pyarrow.compute as pc

from streamrec.data.movielens import load_ml_latest_small, per_user_time_split
from streamrec.fid import hash_bytes
from streamrec.schema import EmbeddingFeature, Label, Schema


def test_ml_latest_small_ctr_table(ml_small_dir):
    log = load_ml_latest_small(ml_small_dir / "ratings.csv")
    assert log.num_rows == 100_836
    assert pc.count_distinct(log["user_id"]).as_py() == 610
    assert pc.count_distinct(log["item_id"]).as_py() == 9724
    ts = log["timestamp"].to_numpy()
    assert (np.diff(ts) >= 0).all()  # time-ordered interaction log
    rating = log["rating"].to_numpy()
    assert (log["label"].to_numpy() == (rating >= 4)).all()
    toy_story = log.filter(pc.equal(log["item_id"], 1)).slice(0, 1).to_pylist()[0]
    assert toy_story["genres"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]


def test_ml100k_has_demographics_and_multi_valued_genres(ml100k):
    assert ml100k.num_rows == 100_000
    assert set(ml100k.column_names) >= {"age", "gender", "occupation", "zip_code", "genres"}
    row = ml100k.filter(pc.equal(ml100k["item_id"], 1)).slice(0, 1).to_pylist()[0]
    assert row["genres"] == ["Animation", "Children's", "Comedy"]
    schema = Schema(
        labels=[Label(name="label")],
        embeddings=[
            EmbeddingFeature(name="genres", table="genre"),
            EmbeddingFeature(name="user_id"),
        ],
    )
    batch = schema.encode(ml100k.slice(0, 64))
    genres = batch.sparse["genres"]
    assert genres.lengths().max() > 1
    first = ml100k.slice(0, 1).to_pylist()[0]
    assert genres.values[: len(first["genres"])].tolist() == [
        hash_bytes(g) for g in first["genres"]
    ]


def test_per_user_time_split_takes_each_users_last_fifth(ml_small_dir):
    log = load_ml_latest_small(ml_small_dir)
    train, test = per_user_time_split(log, 0.2)
    assert train.num_rows + test.num_rows == log.num_rows
    tr = train.group_by("user_id").aggregate([("timestamp", "max"), ("timestamp", "count")])
    te = test.group_by("user_id").aggregate([("timestamp", "min"), ("timestamp", "count")])
    te = te.rename_columns({"timestamp_count": "test_count"})
    joined = tr.join(te, "user_id")
    assert joined.num_rows == 610  # every user (≥ 20 ratings) is in both
    assert (joined["timestamp_max"].to_numpy() <= joined["timestamp_min"].to_numpy()).all()
    n = joined["timestamp_count"].to_numpy() + joined["test_count"].to_numpy()
    assert (joined["test_count"].to_numpy() == np.rint(0.2 * n)).all()


def test_history_holds_only_earlier_items_of_the_same_user():
    import pyarrow as pa

    from streamrec.data.movielens import add_history

    log = pa.table(
        {
            "user_id": [1, 2, 1, 1, 2, 1],
            "item_id": [10, 20, 11, 12, 21, 13],
            "label": [1, 1, 0, 1, 1, 1],
        }
    )
    hist = add_history(log, length=2)["history"].to_pylist()
    assert hist == [[], [], [10], [10, 11], [20], [11, 12]]
    pos = add_history(log, length=5, positives_only=True)["history"].to_pylist()
    assert pos == [[], [], [10], [10], [20], [10, 12]]
