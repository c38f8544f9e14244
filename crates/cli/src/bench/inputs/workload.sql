-- ukasan bench workload: inserts, indexes, joins, grouping, string building, updates.
-- @ROWS@ is replaced with the size before the run.
CREATE TABLE person(id INTEGER PRIMARY KEY, name TEXT, city TEXT, age INT);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < @ROWS@)
INSERT INTO person SELECT x, 'name-' || x, 'city-' || (x % 97), x % 90 FROM c;
CREATE INDEX person_city ON person(city);
CREATE TABLE orders(id INTEGER PRIMARY KEY, person INT, amount REAL, note TEXT);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < @ROWS@ * 3)
INSERT INTO orders
  SELECT x, (x * 7919) % @ROWS@ + 1, (x % 1000) / 10.0,
         printf('order %d for %08x', x, (x * 2654435761) % 4294967296)
  FROM c;
CREATE INDEX orders_person ON orders(person);
SELECT city, count(*), avg(age) FROM person GROUP BY city ORDER BY 2 DESC, 1 LIMIT 5;
SELECT p.city, round(sum(o.amount), 1) FROM orders o JOIN person p ON p.id = o.person
  GROUP BY p.city ORDER BY 2 DESC LIMIT 5;
SELECT count(DISTINCT substr(note, 1, 14)) FROM orders;
SELECT length(group_concat(upper(name), ',')) FROM (SELECT name FROM person ORDER BY name DESC);
UPDATE person SET name = upper(name) || '!' WHERE age < 30;
DELETE FROM orders WHERE amount < 10;
SELECT count(*), max(length(note)) FROM orders WHERE note LIKE '%a%';
SELECT json_group_array(json_object('id', id, 'name', name)) IS NOT NULL
  FROM (SELECT id, name FROM person LIMIT 2000);
