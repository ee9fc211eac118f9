-- Margin per tenant: what the period's invoices charge against what the tenant cost (the
-- reconciled allocation). Charge is the final invoices' lines summed over their versions
-- (a delta version's lines are differences, so the sum is the current charge); a tenant with
-- no final invoice yet is shown with its provisional draft. A tenant with cost and no plan has
-- no charge (unbilled); `_unattributed` is the cost no tenant could be billed for.
WITH charged AS (
  SELECT tenant, status, sum(amount) AS charge
  FROM invoice_lines
  GROUP BY tenant, status
), billed AS (
  SELECT c.tenant, c.status, c.charge
  FROM charged c
  WHERE c.status = 'final'
     OR NOT EXISTS (SELECT 1 FROM charged f WHERE f.tenant = c.tenant AND f.status = 'final')
), cost AS (
  SELECT tenant, sum(cost) AS cost
  FROM allocation
  WHERE tenant IS NOT NULL
  GROUP BY tenant
)
SELECT coalesce(b.tenant, c.tenant) AS tenant,
       coalesce(b.status, 'unbilled') AS status,
       coalesce(b.charge, 0) AS charge,
       coalesce(c.cost, 0) AS cost,
       coalesce(b.charge, 0) - coalesce(c.cost, 0) AS margin,
       CASE WHEN coalesce(b.charge, 0) = 0 THEN NULL
            ELSE round(CAST(coalesce(b.charge, 0) - coalesce(c.cost, 0) AS DOUBLE) / CAST(b.charge AS DOUBLE) * 100, 2)
       END AS margin_pct
FROM billed b
FULL OUTER JOIN cost c ON b.tenant = c.tenant
ORDER BY tenant
