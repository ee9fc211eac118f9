-- Reconciled cost per tenant per UTC day.
SELECT day, tenant, sum(cost) AS cost
FROM allocation
WHERE tenant IS NOT NULL
GROUP BY day, tenant
ORDER BY day, tenant
