"""Scenario rules: first match wins, placeholders, the trunk's own scenario, the 404 default."""

from __future__ import annotations

from services.runtime.config_calls import RuleMatch, ScenarioRule, ScenariosSection
from services.sipgw.scenarios import Action, Scenarios

SECTION = ScenariosSection(
    incoming=(
        ScenarioRule(match=RuleMatch(called="1.."), dial="${called}"),
        ScenarioRule(match=RuleMatch(called="9(.*)", caller="2.."), forward="sip:${caller}-${called}@127.0.0.1:5080"),
        ScenarioRule(match=RuleMatch(called="0"), ring_department="reception"),
        ScenarioRule(match=RuleMatch(caller="666"), reject=403),
    ),
    inter_server=(ScenarioRule(match=RuleMatch(called="2.."), ring_department="support"), ScenarioRule(reject=486)),
)


def test_first_matching_rule_gives_the_action() -> None:
    scenarios = Scenarios(SECTION)
    assert scenarios.route("123", "555", from_trunk=False) == Action("dial", "123")
    assert scenarios.route("1234", "555", from_trunk=False) == Action("reject", code=404)  # whole-number match
    assert scenarios.route("9001", "201", from_trunk=False) == Action("forward", "sip:201-9001@127.0.0.1:5080")
    assert scenarios.route("9001", "301", from_trunk=False) == Action("reject", code=404)  # caller must match too
    assert scenarios.route("0", "301", from_trunk=False) == Action("ring_department", "reception")
    assert scenarios.route("777", "666", from_trunk=False) == Action("reject", code=403)


def test_trunk_calls_use_inter_server_when_there_is_one() -> None:
    scenarios = Scenarios(SECTION)
    assert scenarios.route("201", "100", from_trunk=True) == Action("ring_department", "support")
    assert scenarios.route("123", "100", from_trunk=True) == Action("reject", code=486)
    only_incoming = Scenarios(ScenariosSection(incoming=SECTION.incoming))
    assert only_incoming.route("123", "100", from_trunk=True) == Action("dial", "123")


def test_no_scenario_rings_the_dialed_number_but_unmatched_rules_reject_with_404() -> None:
    assert Scenarios(ScenariosSection()).route("100", "200", from_trunk=True) == Action("dial", "100")
    only_sales = Scenarios(ScenariosSection(incoming=(ScenarioRule(match=RuleMatch(called="5.."), dial="500"),)))
    assert only_sales.route("100", "200", from_trunk=True) == Action("reject", code=404)
