"""template.yaml read as data: the alarms, the dashboard and tracing, checked against the metrics the code emits
(sagebatch.lambdas.metrics). The alarms' metric math is evaluated here, minute by minute, on made-up data."""

from __future__ import annotations

import ast
import json
import re
from typing import Any

import pytest

from sagebatch.lambdas import metrics as names
from sagebatch.observability import NAMESPACE, SERVICE
from sagebatch.tooling.local.template import load_template
from tests.conftest import ROOT

TEMPLATE = load_template(ROOT / "template.yaml")
RESOURCES = TEMPLATE["Resources"]
PARAMETERS = TEMPLATE["Parameters"]
ALARMS = {k: v["Properties"] for k, v in RESOURCES.items() if v["Type"] == "AWS::CloudWatch::Alarm"}
WORKER = [{"Name": "function", "Value": names.WORKER}, {"Name": "service", "Value": SERVICE}]
METRIC_NAMES = {value for key, value in vars(names).items() if key.isupper() and isinstance(value, str)} - {
    *names.FUNCTIONS,
    names.ERROR_TYPE,
}


def queries(alarm: str) -> dict[str, dict[str, Any]]:
    return {q["Id"]: q for q in ALARMS[alarm]["Metrics"]}


def stat(alarm: str, query: str) -> tuple[str, str, list[dict[str, Any]], int, str]:
    """(namespace, metric name, dimensions, period, statistic) of one of the alarm's metric queries."""
    metric_stat = queries(alarm)[query]["MetricStat"]
    metric = metric_stat["Metric"]
    return metric["Namespace"], metric["MetricName"], metric["Dimensions"], metric_stat["Period"], metric_stat["Stat"]


def expression(alarm: str) -> str:
    (returned,) = [q for q in ALARMS[alarm]["Metrics"] if q.get("ReturnData")]
    return returned["Expression"]


def evaluate(text: str, **values: float | None) -> float:
    """One datapoint of a CloudWatch metric math expression: IF (lazy, like CloudWatch's per-datapoint choice), FILL,
    arithmetic, comparisons and AND. `None` is a missing datapoint."""

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return values[node.id]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "FILL":
            value = ev(node.args[0])
            return ev(node.args[1]) if value is None else value
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "IF":
            return ev(node.args[1]) if ev(node.args[0]) else ev(node.args[2])
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
            return all(ev(v) for v in node.values)
        if isinstance(node, ast.BinOp):
            ops = {
                ast.Add: lambda a, b: a + b,
                ast.Sub: lambda a, b: a - b,
                ast.Mult: lambda a, b: a * b,
                ast.Div: lambda a, b: a / b,
            }
            return ops[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            left, right = ev(node.left), ev(node.comparators[0])
            compare = {
                ast.Gt: left > right,
                ast.GtE: left >= right,
                ast.Eq: left == right,
                ast.Lt: left < right,
                ast.LtE: left <= right,
            }
            return compare[type(node.ops[0])]
        raise AssertionError(f"unsupported metric math in {text!r}: {ast.dump(node)}")

    return float(ev(ast.parse(text.replace(" AND ", " and "), mode="eval")))


def fires(alarm: str, value: float, threshold: float) -> bool:
    operator = ALARMS[alarm]["ComparisonOperator"]
    return {"GreaterThanThreshold": value > threshold, "GreaterThanOrEqualToThreshold": value >= threshold}[operator]


# -- what every new alarm shares --------------------------------------------------------------------
@pytest.mark.parametrize("alarm", ["RecordFailureRateAlarm", "EndpointErrorRateAlarm", "JobStuckAlarm"])
def test_each_alarm_notifies_the_alarm_action_and_returns_one_expression(alarm):
    # Given the alarm; Then it notifies AlarmActionArn when set, and its metric math returns exactly one series
    props = ALARMS[alarm]
    assert props["AlarmActions"] == {"Fn::If": ["HasAlarmAction", [{"Ref": "AlarmActionArn"}], {"Ref": "AWS::NoValue"}]}
    assert sum(bool(q.get("ReturnData")) for q in props["Metrics"]) == 1
    assert props["AlarmDescription"].strip()


def test_every_sagebatch_metric_an_alarm_reads_is_one_the_workers_emit():
    # Given every metric query of every alarm in the sagebatch namespace
    used = [
        (alarm, q["MetricStat"]["Metric"])
        for alarm, props in ALARMS.items()
        for q in props.get("Metrics", [])
        if "MetricStat" in q and q["MetricStat"]["Metric"]["Namespace"] == NAMESPACE
    ]

    # Then each names a metric of sagebatch.lambdas.metrics, with the worker's service + function dimensions
    assert used
    for alarm, metric in used:
        assert metric["MetricName"] in METRIC_NAMES, f"{alarm}: {metric['MetricName']} is not emitted"
        assert metric["Dimensions"] == WORKER, alarm


# -- record failure rate -------------------------------------------------------------------------
def test_the_record_failure_rate_alarm_is_failed_over_finished_records_in_15_minutes():
    # Given the alarm's queries
    assert stat("RecordFailureRateAlarm", "succeeded") == (NAMESPACE, names.RECORDS_SUCCEEDED, WORKER, 900, "Sum")
    assert stat("RecordFailureRateAlarm", "failed") == (NAMESPACE, names.RECORDS_FAILED, WORKER, 900, "Sum")
    # Then its threshold is the parameter, 5 % by default, over one 15-minute period
    props = ALARMS["RecordFailureRateAlarm"]
    assert props["Threshold"] == {"Ref": "RecordFailureRateThreshold"}
    assert PARAMETERS["RecordFailureRateThreshold"]["Default"] == 5
    assert (props["EvaluationPeriods"], props["DatapointsToAlarm"], props["TreatMissingData"]) == (1, 1, "notBreaching")


@pytest.mark.parametrize(
    ("succeeded", "failed", "alarm"),
    [
        (95, 5, False),  # exactly 5 %: not above
        (94, 6, True),
        (0, 30, True),
        (2, 1, False),  # a 3-line job with one bad line: below the 20-record minimum
        (None, None, False),  # nothing finished
        (None, 25, True),  # only failures reported in the window
    ],
)
def test_the_record_failure_rate_fires_above_5_percent_of_at_least_20_records(succeeded, failed, alarm):
    value = evaluate(expression("RecordFailureRateAlarm"), succeeded=succeeded, failed=failed)
    assert fires("RecordFailureRateAlarm", value, PARAMETERS["RecordFailureRateThreshold"]["Default"]) is alarm


# -- endpoint error rate ---------------------------------------------------------------------------
def test_the_endpoint_error_rate_alarm_is_failed_over_sent_requests_in_15_minutes():
    assert stat("EndpointErrorRateAlarm", "attempts") == (NAMESPACE, names.ENDPOINT_ATTEMPTS, WORKER, 900, "Sum")
    assert stat("EndpointErrorRateAlarm", "errors") == (NAMESPACE, names.ENDPOINT_ERRORS, WORKER, 900, "Sum")
    props = ALARMS["EndpointErrorRateAlarm"]
    assert props["Threshold"] == {"Ref": "EndpointErrorRateThreshold"}
    assert PARAMETERS["EndpointErrorRateThreshold"]["Default"] == 10
    assert (props["EvaluationPeriods"], props["TreatMissingData"]) == (1, "notBreaching")


@pytest.mark.parametrize(
    ("attempts", "errors", "alarm"),
    [
        (100, 10, False),
        (100, 11, True),
        (10, 10, False),
        (None, None, False),
        (40, None, False),
    ],
)
def test_the_endpoint_error_rate_fires_above_10_percent_of_at_least_20_requests(attempts, errors, alarm):
    value = evaluate(expression("EndpointErrorRateAlarm"), attempts=attempts, errors=errors)
    assert fires("EndpointErrorRateAlarm", value, PARAMETERS["EndpointErrorRateThreshold"]["Default"]) is alarm


# -- job stuck RUNNING -------------------------------------------------------------------------------
def test_the_stuck_job_alarm_watches_the_work_queue_and_finished_records_minute_by_minute():
    # Given the alarm's queries: our progress metric and the work queue's depth, per minute
    work_queue = [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["WorkQueue", "QueueName"]}}]
    assert stat("JobStuckAlarm", "completed") == (NAMESPACE, names.RECORDS_COMPLETED, WORKER, 60, "Sum")
    assert stat("JobStuckAlarm", "waiting") == ("AWS/SQS", "ApproximateNumberOfMessagesVisible", work_queue, 60, "Maximum")
    assert stat("JobStuckAlarm", "in_flight") == ("AWS/SQS", "ApproximateNumberOfMessagesNotVisible", work_queue, 60, "Maximum")
    # Then StuckJobMinutes stalled minutes in a row fire it, and that is longer than a worker invocation can last
    # (a worker reports the records it finished when its invocation ends)
    props = ALARMS["JobStuckAlarm"]
    assert props["EvaluationPeriods"] == props["DatapointsToAlarm"] == {"Ref": "StuckJobMinutes"}
    assert (props["Threshold"], props["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
    worker_timeout_minutes = (
        RESOURCES["WorkerFunction"]["Properties"].get("Timeout", TEMPLATE["Globals"]["Function"]["Timeout"]) / 60
    )
    minutes = PARAMETERS["StuckJobMinutes"]
    assert minutes["MinValue"] > worker_timeout_minutes and minutes["Default"] >= minutes["MinValue"]
    assert 60 * minutes["MaxValue"] <= 86_400  # CloudWatch: evaluation range at most one day at a 60 s period


@pytest.mark.parametrize(
    ("waiting", "in_flight", "completed", "stalled"),
    [
        (3, 0, None, True),  # shards waiting, no worker reported anything: missing progress counts as none
        (0, 2, 0, True),  # shards received (or waiting out a failed delivery's visibility timeout), nothing finished
        (3, 2, 7, False),  # records finishing
        (0, 0, None, False),  # idle: nothing queued
        (None, None, None, False),  # no data at all
        (None, 1, None, True),
    ],
)
def test_a_minute_is_stalled_when_work_is_queued_and_no_record_finished(waiting, in_flight, completed, stalled):
    value = evaluate(expression("JobStuckAlarm"), waiting=waiting, in_flight=in_flight, completed=completed)
    assert fires("JobStuckAlarm", value, ALARMS["JobStuckAlarm"]["Threshold"]) is stalled


# -- dashboard -------------------------------------------------------------------------------------
def dashboard() -> dict[str, Any]:
    (body,) = [
        r["Properties"]["DashboardBody"]["Fn::Sub"] for r in RESOURCES.values() if r["Type"] == "AWS::CloudWatch::Dashboard"
    ]
    return json.loads(re.sub(r"\$\{([^}]+)\}", lambda m: f"<{m.group(1)}>", body))


def test_the_dashboard_is_json_that_shows_every_alarm_and_only_metrics_the_code_emits():
    # Given the dashboard body with its ${...} references replaced
    board = dashboard()
    widgets = board["widgets"]

    # Then its alarm widget lists every alarm of the stack ...
    (alarm_widget,) = [w for w in widgets if w["type"] == "alarm"]
    assert sorted(alarm_widget["properties"]["alarms"]) == sorted(f"<{name}.Arn>" for name in ALARMS)
    # ... and every sagebatch metric on it is one the code emits, under its function's dimension
    shown = [
        row
        for w in widgets
        if w["type"] == "metric"
        for row in w["properties"]["metrics"]
        if isinstance(row[0], str) and row[0] == NAMESPACE
    ]
    assert shown
    for row in shown:
        _, metric, *pairs = [part for part in row if isinstance(part, str)]  # a trailing dict holds render options
        dimensions = dict(zip(pairs[::2], pairs[1::2], strict=True))
        assert metric in METRIC_NAMES and dimensions == {"function": dimensions.get("function"), "service": SERVICE}, row
        assert dimensions["function"] in names.FUNCTIONS, row
    # ... including the ones the issue asks for
    titles = " | ".join(w["properties"].get("title", "") for w in widgets)
    for wanted in ("tokens/s", "Records", "latency", "429s", "Limiter", "Dead-letter", "Lambda errors", "Lambda duration"):
        assert wanted in titles
    searched = [
        row[0]["expression"]
        for w in widgets
        if w["type"] == "metric"
        for row in w["properties"]["metrics"]
        if isinstance(row[0], dict) and "SEARCH" in row[0].get("expression", "")
    ]
    assert any(names.ERROR_TYPE in s and names.RECORDS_FAILED in s for s in searched)


# -- tracing and the entry points ----------------------------------------------------------------------
def test_functions_trace_and_name_the_metrics_namespace():
    function = TEMPLATE["Globals"]["Function"]
    assert function["Tracing"] == "Active"
    assert function["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"] == NAMESPACE
    assert function["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"] == SERVICE


@pytest.mark.parametrize("function", names.FUNCTIONS)
def test_each_entry_point_traces_without_the_response_and_flushes_metrics_with_cold_starts(function):
    # Given the entry point's decorators, as source
    tree = ast.parse((ROOT / "functions" / function / "app.py").read_text())
    (handler,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "lambda_handler"]
    decorators = [ast.unparse(d) for d in handler.decorator_list]

    # Then the logger, the tracer (no response capture) and the metrics flush (with the cold-start metric) wrap it
    assert decorators == [
        "logger.inject_lambda_context",
        "tracer.capture_lambda_handler(capture_response=False)",
        "metrics.log_metrics(capture_cold_start_metric=True)",
    ]
    assert f"function_metrics({function.upper()})" in ast.unparse(tree)


def test_the_readme_documents_every_metric_and_alarm():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Metrics and alarms", 1)[1].split("\n## ", 1)[0]
    missing = sorted(name for name in METRIC_NAMES | set(ALARMS) if f"`{name}`" not in section)
    assert not missing, f"README 'Metrics and alarms' does not mention {missing}"
