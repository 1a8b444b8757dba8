"""datasets.make_lists on tiny on-the-fly datasets: frame folders, a video file, CSV and mask ground truth."""
import numpy as np
import pytest

from datasets.lists import frame_labels, parse_list_file
from datasets.make_lists import main, make_lists, mask_intervals, read_gt_csv, scan_videos
from utils.errors import DataError, ListFileError


def frame_folder(path, count, start=0):
    path.mkdir(parents=True)
    for i in range(start, start + count):
        (path / f"img_{i:08}.jpg").write_bytes(b"")  # counting never decodes
    (path / "notes.txt").write_text("not a frame")


def write_video(path, count):
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 10 * i, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "data"
    frame_folder(root / "videos" / "normal_01", 30)
    frame_folder(root / "videos" / "Abuse" / "abuse_02", 40, start=1)
    write_video(root / "videos" / "fight_03.mp4", 12)
    return root


def test_scan_counts_frames_on_disk_and_in_video_files(dataset):
    videos = scan_videos(dataset, "videos")
    assert [(v.path, v.name, v.num_frames) for v in videos] == [
        ("videos/Abuse/abuse_02", "Abuse/abuse_02", 40),
        ("videos/fight_03.mp4", "fight_03", 12),
        ("videos/normal_01", "normal_01", 30),
    ]


def test_csv_ground_truth_with_split_round_trips_through_parser(dataset, tmp_path):
    gt = tmp_path / "gt.csv"
    gt.write_text("video,label,split,intervals\nnormal_01,0,train,\nAbuse/abuse_02,1,train,\n"
                  "fight_03.mp4,1,test,2-5\n")
    counts = make_lists(dataset, ["videos"], gt, tmp_path / "train.txt", tmp_path / "test.txt")
    assert counts == {"train": 2, "test": 1}
    train = parse_list_file(tmp_path / "train.txt")
    assert [(r.path, r.num_frames, r.label) for r in train] == [
        ("videos/Abuse/abuse_02", 40, 1), ("videos/normal_01", 30, 0)]
    (test,) = parse_list_file(tmp_path / "test.txt")
    assert (test.path, test.num_frames, test.label, test.intervals) == ("videos/fight_03.mp4", 12, 1, [(2, 5)])


def test_csv_without_split_goes_to_both_lists_and_multi_interval_layout(dataset, tmp_path):
    gt = tmp_path / "gt.csv"
    gt.write_text("video,label,intervals\nnormal_01,0,\nAbuse/abuse_02,3,1-4;10-20\nfight_03,1,\n")
    make_lists(dataset, ["videos"], gt, tmp_path / "train.txt", tmp_path / "test.txt")
    assert len(parse_list_file(tmp_path / "train.txt")) == 3
    lines = (tmp_path / "test.txt").read_text().splitlines()
    assert lines[0] == "videos/Abuse/abuse_02 40 3 1 4 10 20"
    assert lines[1] == "videos/fight_03.mp4 12 1 -1 -1 -1 -1"
    records = parse_list_file(tmp_path / "test.txt")
    assert records[0].intervals == [(1, 4), (10, 20)] and records[2].intervals == []


def test_mask_ground_truth(dataset, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    mask = np.zeros(12, np.uint8)
    mask[4:9] = 1
    np.save(masks / "fight_03.npy", mask)
    (masks / "Abuse").mkdir()
    np.save(masks / "Abuse" / "abuse_02.npy", np.zeros(40, np.uint8))
    counts = make_lists(dataset, ["videos"], masks, tmp_path / "train.txt", tmp_path / "test.txt")
    assert counts == {"train": 1, "test": 2}
    assert (tmp_path / "train.txt").read_text() == "videos/normal_01 0 30 0\n"
    abuse, fight = parse_list_file(tmp_path / "test.txt")
    assert (abuse.label, abuse.intervals) == (0, [(0, 40)])  # normal test video: "0 N" as published
    assert fight.intervals == [(4, 9)] and frame_labels(fight).tolist() == mask.tolist()


def test_tad_style_frame_folder_named_like_a_video(tmp_path):
    root = tmp_path / "tad"
    frame_folder(root / "frames" / "abnormal" / "01_Accident_006.mp4", 20)
    gt = tmp_path / "gt.csv"
    gt.write_text("video,label,intervals\nabnormal/01_Accident_006.mp4,1,5-9\n")
    make_lists(root, ["frames"], gt, out_test=tmp_path / "test.txt")
    assert (tmp_path / "test.txt").read_text() == "frames/abnormal/01_Accident_006.mp4 20 1 5 9\n"


def test_mask_intervals_runs():
    assert mask_intervals([1, 1, 0, 0, 1, 0, 1]) == [(0, 2), (4, 5), (6, 7)]
    assert mask_intervals([0, 0]) == []


def test_errors(dataset, tmp_path):
    gt = tmp_path / "gt.csv"
    gt.write_text("video,label\nnormal_01,0\n")
    with pytest.raises(DataError, match="no ground truth.*skip-unlabelled"):
        make_lists(dataset, ["videos"], gt, tmp_path / "train.txt")
    assert make_lists(dataset, ["videos"], gt, tmp_path / "train.txt", skip_unlabelled=True) == {"train": 1}
    with pytest.raises(DataError, match="--overwrite"):
        make_lists(dataset, ["videos"], gt, tmp_path / "train.txt", skip_unlabelled=True)
    gt.write_text("video,label\nghost,0\n")
    with pytest.raises(DataError, match="ghost"):
        make_lists(dataset, ["videos"], gt, tmp_path / "t2.txt", skip_unlabelled=True)
    with pytest.raises(DataError, match="videos folder not found"):
        make_lists(dataset, ["nope"], gt, tmp_path / "t3.txt")
    (dataset / "videos" / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(DataError, match="broken.mp4"):
        scan_videos(dataset, "videos")


@pytest.mark.parametrize(
    "text, match",
    [
        ("name,label\na,0\n", "header"),
        ("video,label\na,zero\n", ":2: label"),
        ("video,label,split\na,0,val\n", "split"),
        ("video,label,intervals\na,1,5-2\n", "ends before"),
        ("video,label,intervals\na,1,5:9\n", "start-end"),
        ("video,label\na,0,1\n", ":2: expected 2 columns"),
        ("video,label\na,0\na,1\n", "twice"),
    ],
)
def test_gt_csv_errors(tmp_path, text, match):
    gt = tmp_path / "gt.csv"
    gt.write_text(text)
    with pytest.raises(ListFileError, match=match):
        read_gt_csv(gt)


def test_command_line(dataset, tmp_path, capsys):
    gt = tmp_path / "gt.csv"
    gt.write_text("video,label\nnormal_01,0\nAbuse/abuse_02,1\nfight_03,1\n")
    out = tmp_path / "lists" / "train.txt"
    assert main(["--root", str(dataset), "--videos", "videos", "--gt", str(gt), "--out-train", str(out)]) == 0
    assert "wrote 3 videos" in capsys.readouterr().out
    assert main(["--root", str(dataset), "--videos", "videos", "--gt", str(gt), "--out-train", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
