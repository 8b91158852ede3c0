"""The mark every batch submission carries (``jobbridge.backends.batch.marks``), on its own."""

from __future__ import annotations

from jobbridge import JobSpec
from jobbridge.backends.batch.marks import Mark, add_located, marked_name, split_located
from tests.batch_support import array_members, case_jobs


def test_a_lone_member_adds_its_index_to_the_tag() -> None:
    members = array_members(JobSpec(executable="x", array="0-9"))
    [plain] = case_jobs("plain")
    assert str(Mark.of("jb-arr", members[7], [members[7]])) == "jb-arr.7"
    assert str(Mark.of("jb-arr", members[0], members)) == "jb-arr"
    assert str(Mark.of("jb-one", plain, [plain])) == "jb-one"
    assert not Mark("jb-a/b").reads_back and Mark("jb-a_b").reads_back


def test_marked_names_keep_the_mark_whole_within_the_limit() -> None:
    assert marked_name("it's a $(job)", Mark("jb-abc")) == "it_s_a_job.jb-abc"
    long = marked_name("x" * 80, Mark("jb-abc", 7))
    assert long == "x" * 55 + ".jb-abc.7" and len(long) == 64
    mended = marked_name("9" * 80, Mark("jb-abc"), limit=20, start=lambda name: f"job_{name}")
    assert mended == "job_" + "9" * 9 + ".jb-abc" and len(mended) == 20


def test_a_name_is_read_back_to_its_mark() -> None:
    assert Mark.ending("my.job.jb-abc") == Mark("jb-abc")
    assert Mark.ending(" run.jb-abc.7\n") == Mark("jb-abc", 7)
    assert Mark.ending("jb-abc") == Mark("jb-abc")
    for unmarked in ("someone else's", "xjb-abc", "run.jb-abc.x", "run.jb-"):
        assert Mark.ending(unmarked) is None, unmarked


def test_located_ids_of_lone_members_carry_their_index() -> None:
    found: dict[str, list[str]] = {}
    add_located(found, Mark("jb-a"), "5")
    add_located(found, Mark("jb-a", 3), "7.srv")
    add_located(found, Mark("jb-a"), "5")
    add_located(found, None, "9")
    assert found == {"jb-a": ["5", "7.srv#3"]}
    assert [split_located(entry) for entry in found["jb-a"]] == [("5", None), ("7.srv", 3)]
    assert split_located("6.0#x") == ("6.0#x", None)
