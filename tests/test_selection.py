"""Model-selection methods: which utterances train and which validate; oracle results are labelled."""

from __future__ import annotations

import pytest

from metadg.bench import Cell, results_rows
from metadg.config import ConfigError, SelectionConfig, build_experiment
from metadg.engine.selection import select
from metadg.engine.trainer import Trainer


def _task(tiny_config):
    exp = build_experiment(tiny_config)
    return exp.task.build(seed=0)


def _spoof_domains(utts, key):
    return {v for v, y in zip(utts.attr(key), utts.labels) if y == 0}


def test_training_domain_validates_on_the_dev_split(tiny_config):
    task = _task(tiny_config)
    sel = select(SelectionConfig(), task)
    assert sel.val.ids == task.dev_set().ids and sel.train.ids == task.train_set().ids
    assert not sel.oracle


def test_leave_one_domain_out_holds_the_domain_out_of_training_and_validates_on_it(tiny_config):
    task = _task(tiny_config)
    key = task.domain_key
    domains = sorted(_spoof_domains(task.train_set(), key))
    sel = select(SelectionConfig(method="leave_one_domain_out"), task)
    held = domains[-1]
    assert sel.label == f"leave_one_domain_out:{held}"
    assert _spoof_domains(sel.train, key) == set(domains) - {held}
    assert _spoof_domains(sel.val, key) == {held}
    dev = task.dev_set()
    assert (sel.val.labels == 1).sum() == (dev.labels == 1).sum()  # all dev bona fide validates
    assert (sel.train.labels == 1).sum() == (task.train_set().labels == 1).sum()

    chosen = select(SelectionConfig(method="leave_one_domain_out", domain=domains[0]), task)
    assert _spoof_domains(chosen.val, key) == {domains[0]}


def test_selection_errors_name_the_key_and_the_choices(tiny_config):
    task = _task(tiny_config)
    with pytest.raises(ConfigError, match=r"train.selection.domain: 'nope' is not a training domain \(have: "):
        select(SelectionConfig(method="leave_one_domain_out", domain="nope"), task)
    with pytest.raises(ConfigError, match=r"train.selection.eval_set: unknown set 'x' \(have: all\)"):
        select(SelectionConfig(method="oracle", eval_set="x"), task)
    tiny_config["train"]["selection"] = {"method": "best_guess"}
    with pytest.raises(ConfigError, match="train.selection.method"):
        build_experiment(tiny_config)


def test_oracle_selects_on_target_data_and_is_labelled_in_tables(tiny_config):
    tiny_config["train"].update({"steps": 4, "eval_every": 2, "selection": {"method": "oracle"}})
    exp = build_experiment(tiny_config)
    trainer = Trainer(exp)
    result = trainer.fit()
    assert result.selection == "oracle:all"
    assert trainer.dev_set.ids == trainer.task.eval_sets()["all"].ids
    # The selected dev EER is the target EER at the best step, which is what gets evaluated.
    assert result.dev["eer"] == pytest.approx(result.eval["all"]["eer"])
    rows = results_rows([(Cell("oracle run", exp, "oracle run"), result)])
    assert rows[0]["system"] == "oracle run [oracle]" and rows[0]["selection"] == "oracle:all"


def test_leave_one_domain_out_trains_without_the_held_domain(tiny_config):
    tiny_config["train"].update({"steps": 2, "eval_every": 2, "selection": {"method": "leave_one_domain_out"}})
    trainer = Trainer(build_experiment(tiny_config))
    trainer.setup()
    held = trainer.selection.label.split(":", 1)[1]
    assert held not in trainer.batcher.domains and len(trainer.batcher.domains) >= 1
