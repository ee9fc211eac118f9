-- Reconciled cost per tenant for the period, beside the list-price estimate from the live
-- counters: the cost basis of margin (margin.sql sets it against the invoices).
WITH reconciled AS (
  SELECT tenant, sum(cost) AS cost FROM allocation WHERE tenant IS NOT NULL GROUP BY tenant
), estimated AS (
  SELECT tenant, sum(est_cost) AS est_cost FROM usage GROUP BY tenant
)
SELECT coalesce(r.tenant, e.tenant) AS tenant,
       coalesce(r.cost, 0) AS reconciled_cost,
       coalesce(e.est_cost, 0) AS estimated_cost,
       coalesce(r.cost, 0) - coalesce(e.est_cost, 0) AS difference
FROM reconciled r FULL OUTER JOIN estimated e ON r.tenant = e.tenant
ORDER BY tenant
