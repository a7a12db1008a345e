"""The CLI's status line while kernels compile."""

import threading

import spann.cli.compile_notice as notice
from spann.kernels.compiling import Compiling


def _drive(monkeypatch, states, meta):
    """Run the notice's loop over a scripted sequence of compile states; returns when done."""
    it = iter(states)
    stop = threading.Event()

    def scripted():
        try:
            return next(it)
        except StopIteration:
            stop.set()
            return None

    monkeypatch.setattr(notice, "compiling", scripted)
    monkeypatch.setattr(stop, "wait", lambda _t: stop.is_set())
    notice._run(meta, 2.0, stop)


def test_a_long_compile_shows_a_status_line_then_clears_it(monkeypatch, capsys):
    _drive(monkeypatch, [Compiling("search_one", 0.5), Compiling("search_one", 2.6), Compiling("search_one", 3.6),
                         None], {})
    err = capsys.readouterr().err
    assert "compiling search_one (first run on this machine; cached after) 3 s" in err
    assert "4 s" in err  # then updated


def test_short_compiles_and_quiet_runs_show_nothing(monkeypatch, capsys):
    _drive(monkeypatch, [Compiling("k", 0.5), Compiling("k", 1.5), None], {})
    _drive(monkeypatch, [Compiling("k", 5.0), Compiling("k", 6.0), None], {"spann.quiet": True})
    assert "compiling" not in capsys.readouterr().err


def test_not_started_without_a_terminal(monkeypatch):
    import click
    started = []
    monkeypatch.setattr(notice.threading, "Thread", lambda *a, **k: started.append(1))
    monkeypatch.setattr(notice.sys.stderr, "isatty", lambda: False, raising=False)
    notice.start_compile_notice(click.Context(click.Command("x")))
    assert not started
