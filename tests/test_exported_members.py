"""The public API is what ``jobbridge.__all__`` says, no more and no less."""

import jobbridge


def test_all_is_complete_and_sorted() -> None:
    public = {
        name
        for name, value in vars(jobbridge).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("jobbridge")
    }
    assert public == set(jobbridge.__all__)
    assert list(jobbridge.__all__) == sorted(jobbridge.__all__)
    for name in jobbridge.__all__:
        assert getattr(jobbridge, name).__module__.startswith("jobbridge.")
