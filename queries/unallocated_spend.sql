-- CUR usage cost no tenant could be given, by reason and resource (an empty resource is a
-- line without a resource id).
SELECT unallocated_reason AS reason,
       resource,
       count(DISTINCT day) AS days,
       sum(cost) AS cost
FROM allocation
WHERE tenant IS NULL
GROUP BY unallocated_reason, resource
ORDER BY reason, resource
