"""Alerts where teams look: `compactobs alert` evaluates the rules, de-duplicates through the store and sends
to webhooks, Slack and PagerDuty.

- `forecast`: month-end spend projected from a daily series (pure; `report cost --forecast` uses it too);
- `evaluate`: the findings of one pass (the anomaly rules, budget burn, spend spikes, forecasts);
- `state`: which destination was told what, claimed in the store (`alert_state`);
- `sinks`: the payloads and their delivery over HTTP;
- `run`: one pass, from findings to deliveries.

Nothing is imported here, so `compactobs.alerts.forecast` stays a leaf a report can use.
"""
