-- A bundled sqlite3 workload: tables, 60k rows from recursive CTEs, indexes, joins,
-- aggregates, window functions, JSON, FTS5, a transaction rolled back, VACUUM.
-- Every query is deterministic (ORDER BY everywhere).
PRAGMA journal_mode=WAL;
CREATE TABLE item(id INTEGER PRIMARY KEY, name TEXT, grp INTEGER, price REAL, tags TEXT);
CREATE TABLE sale(id INTEGER PRIMARY KEY, item INTEGER REFERENCES item(id), qty INTEGER, day INTEGER);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000)
INSERT INTO item SELECT i, 'item-' || i, i % 37, (i * 7919 % 1000) / 10.0,
  json_array('t' || (i % 5), 't' || (i % 11)) FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50000)
INSERT INTO sale SELECT i, (i * 104729) % 10000 + 1, i % 9 + 1, i % 365 FROM n;
CREATE INDEX sale_item ON sale(item);
CREATE INDEX item_grp ON item(grp, price);
SELECT count(*), sum(qty), min(day), max(day) FROM sale;
SELECT grp, count(*), round(avg(price), 3), max(name) FROM item GROUP BY grp ORDER BY grp LIMIT 12;
SELECT i.grp, sum(s.qty * i.price) AS revenue FROM sale s JOIN item i ON i.id = s.item
  GROUP BY i.grp ORDER BY revenue DESC, i.grp LIMIT 10;
SELECT id, price, rank() OVER (PARTITION BY grp ORDER BY price DESC, id) AS r
  FROM item WHERE grp = 3 ORDER BY r, id LIMIT 8;
SELECT day, sum(qty) OVER (ORDER BY day ROWS BETWEEN 6 PRECEDING AND CURRENT ROW) AS week
  FROM (SELECT day, sum(qty) AS qty FROM sale GROUP BY day) ORDER BY day LIMIT 10;
SELECT j.value, count(*) FROM item, json_each(item.tags) AS j GROUP BY j.value ORDER BY j.value;
SELECT json_group_array(id) FROM (SELECT id FROM item WHERE price > 99.5 ORDER BY id);
CREATE VIRTUAL TABLE doc USING fts5(body);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
INSERT INTO doc SELECT 'word' || (i % 97) || ' common text number ' || i || ' word' || (i % 13) FROM n;
SELECT count(*) FROM doc WHERE doc MATCH 'word7 AND common';
SELECT rowid FROM doc WHERE doc MATCH 'word12 word5' ORDER BY rowid LIMIT 5;
BEGIN;
DELETE FROM sale WHERE day < 100;
UPDATE item SET price = price * 2 WHERE grp = 1;
SELECT count(*) FROM sale;
ROLLBACK;
SELECT count(*) FROM sale;
SELECT group_concat(name, ',') FROM (SELECT name FROM item WHERE id % 1000 = 0 ORDER BY id);
SELECT printf('%.3f', sum(price)), upper(substr(max(name), 1, 6)), length(group_concat(tags)) FROM item;
CREATE TABLE t2 AS SELECT item, sum(qty) AS q FROM sale GROUP BY item;
SELECT count(*), sum(q) FROM t2;
DROP TABLE t2;
VACUUM;
PRAGMA integrity_check;
