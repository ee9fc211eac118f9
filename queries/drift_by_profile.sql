-- Drift per resource over the period: list-price estimate from the counters against what CUR
-- billed, and on how many days the difference was flagged. `(none)` is base-model usage,
-- whose CUR lines carry no resource id.
SELECT resource,
       sum(metered_tokens) AS metered_tokens,
       sum(cur_tokens) AS cur_tokens,
       sum(estimated_cost) AS estimated_cost,
       sum(cur_cost) AS cur_cost,
       sum(difference) AS difference,
       count(DISTINCT CASE WHEN flagged THEN day END) AS flagged_days
FROM drift
GROUP BY resource
ORDER BY resource
