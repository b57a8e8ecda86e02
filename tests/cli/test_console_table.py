"""Tests of deepsc_tune.cli._console_table: rich tables as plain, greppable text."""

from deepsc_tune.cli._console_table import Column, print_table


def test_columns_are_aligned_two_spaces_apart_without_borders(capsys):
    print_table(
        [Column("#", "right", min_width=4), Column("state"), Column("value", "right")],
        [["3", "COMPLETE", "0.9"], ["12", "FAIL", "-"]],
    )
    assert capsys.readouterr().out.splitlines() == [
        "   #  state     value",
        "   3  COMPLETE    0.9",
        "  12  FAIL          -",
    ]


def test_off_a_terminal_a_long_cell_is_never_wrapped_or_cut(capsys):
    long = " ".join(f"key{i}=value{i}" for i in range(60))
    print_table(
        [Column("#", "right"), Column("settings")], [["0", long], ["1", "short\nreason: it failed"]], header=False
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"0  {long}"
    assert lines[1:] == ["1  short", "   reason: it failed"]  # a second line of a cell stays in its column
    assert all(line == line.rstrip() for line in lines)


def test_markup_and_brackets_are_printed_as_they_are(capsys):
    print_table([Column("x")], [["[bold]lr[/bold] [chance level]"]], header=False)
    assert capsys.readouterr().out == "[bold]lr[/bold] [chance level]\n"
