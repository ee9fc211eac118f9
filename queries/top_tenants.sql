-- The ten tenants with the highest reconciled cost, and how their cost was attributed.
SELECT tenant,
       sum(cost) AS cost,
       sum(CASE WHEN basis = 'tag' THEN cost ELSE 0 END) AS by_tag,
       sum(CASE WHEN basis = 'profile' THEN cost ELSE 0 END) AS by_profile,
       sum(CASE WHEN basis = 'usage' THEN cost ELSE 0 END) AS by_usage_split
FROM allocation
WHERE tenant IS NOT NULL
GROUP BY tenant
ORDER BY cost DESC, tenant
LIMIT 10
