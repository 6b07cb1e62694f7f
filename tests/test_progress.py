"""The shared progress bar: on stderr, with an ETA; `--json` stdout stays one JSON object."""

import json

from conftest import DIGITS, run_cli


def test_bar_writes_eta_to_stderr(capsys):
  from jaxdiff.progress import bar
  with bar(total=4, desc="work", unit="step") as b:
    for _ in range(4):
      b.update(1)
  out, err = capsys.readouterr()
  assert out == ""
  assert "work" in err and "4/4" in err and "<" in err  # tqdm's [elapsed<remaining]


def test_bar_wraps_iterables_and_can_be_disabled(capsys):
  from jaxdiff.progress import bar
  assert list(bar(range(3), desc="it")) == [0, 1, 2]
  assert list(bar(range(3), desc="quiet", disable=True)) == [0, 1, 2]
  _, err = capsys.readouterr()
  assert "it" in err and "quiet" not in err


def test_cluster_json_stdout_is_one_object_bar_on_stderr():
  code, out, err = run_cli("cluster", "--config", DIGITS, "--stages", "3", "--json",
                           "--subset", "100", "--samples", "16", "--grid", "12")
  assert code == 0, err
  res = json.loads(out)  # the whole stdout is one JSON object
  assert len(res["boundaries_sigma"]) == 2
  assert "cluster" in err and "12/12" in err
