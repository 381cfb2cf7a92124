"""PostgreSQL: the search's threshold walk as a PL/pgSQL function, ``search_walk``, installed by
migration 6 (:mod:`.schema`) and called by :meth:`.postgres.PostgresCatalogue._walk_in_server`.

It is :meth:`.store.SqlCatalogue._top_k`'s walk for a search scored by lookups, step for step:
the same pick of the list to read (the best next posting, another group's on a plateau), the
same batches (doubled per list), the same bounds and early stop, the same lookups (one
primary-key probe per title, or the words' lists hashed against the titles, chosen by the
same ratio) and the same sums (each group's best weighted impact, added in group order, as
float8, which is Python's float): the page is the Python walk's. Run by the database it is one
statement a search where the walk was one per step (12-16 on two common words), and neither the
batches nor the looked-up postings travel to the client (docs/origin-catalogue.md).

Arguments (groups numbered from 0, as in Python): the page size ``k``, the walk's cap
``max_walk`` (``MAX_WALK``), the number of groups and the first batch; the lists (``c_*``: word,
group, weight, highest impact; ``''`` a group's small lists read up front, whose rows are the
``m_*`` arrays, best first); per group its peak, whether it is a one-letter prefix walked in part,
its sole list; the lookup's words with their groups, weights and list lengths (``l_*``); the
filters: a set of titles, or the category, language, year and duration bounds (NULL: none).
"""

__all__ = ["SEARCH_WALK"]

SEARCH_WALK = """
CREATE OR REPLACE FUNCTION search_walk(
    k integer, max_walk integer, n_groups integer, first_batch integer,
    c_word text[], c_group integer[], c_weight double precision[], c_frontier double precision[],
    peaks double precision[], partial boolean[], sole text[],
    l_word text[], l_group integer[], l_weight double precision[], l_length bigint[],
    m_group integer[], m_title bigint[], m_value double precision[],
    f_set bigint[], f_category text, f_language text, f_year_min integer, f_year_max integer,
    f_duration_min double precision, f_duration_max double precision)
RETURNS TABLE (title_id bigint, score double precision)
LANGUAGE plpgsql STABLE AS $walk$
DECLARE
    eps CONSTANT double precision := 1e-9;
    scan_ratio CONSTANT integer := 16;
    nc integer := cardinality(c_word);
    cf double precision[] := c_frontier;
    cb integer[] := array_fill(first_batch, ARRAY[nc]);
    cex boolean[] := array_fill(false, ARRAY[nc]);
    cflat boolean[] := array_fill(false, ARRAY[nc]);
    ca_imp double precision[] := array_fill(NULL::double precision, ARRAY[nc]);
    ca_tid bigint[] := array_fill(NULL::bigint, ARRAY[nc]);
    m_pos integer[] := array_fill(0, ARRAY[n_groups]);
    m_end integer[] := array_fill(-1, ARRAY[n_groups]);
    outer_join text := '';
    passes text := 'true';
    read_first text;
    read_after text;
    seen bigint[] := '{}';
    s_tid bigint[] := '{}';
    s_score double precision[] := '{}';
    r_tid bigint[]; r_imp double precision[]; r_ok boolean[];
    f_tid bigint[]; f_v double precision[]; n_tid bigint[];
    bounds double precision[];
    lw text[]; listed bigint;
    found_t bigint[]; found_s double precision[];
    kth double precision := NULL;
    walked integer := 0;
    ci integer; alt integer; g integer; known integer; batch integer; n_read integer;
    i integer; gi integer; v double precision; best_v double precision; before double precision;
    own double precision; others double precision; total_b double precision; floor_v double precision;
    min_b double precision;
BEGIN
    -- The merged small lists of a group: rows m_pos..m_end of the m_* arrays (best first).
    FOR i IN 1..coalesce(cardinality(m_group), 0) LOOP
        IF m_end[m_group[i] + 1] < 0 THEN
            m_pos[m_group[i] + 1] := i;
        END IF;
        m_end[m_group[i] + 1] := i;
    END LOOP;
    -- The filters, as store._top_k applies them to a batch: every posting read comes back,
    -- marked by whether its title passes.
    IF f_set IS NOT NULL THEN
        passes := 'p.title_id IN (SELECT unnest($5))';
    ELSIF num_nonnulls(f_category, f_language, f_year_min, f_year_max, f_duration_min, f_duration_max) > 0 THEN
        passes := 't.id IS NOT NULL';
        outer_join := ' LEFT JOIN titles t ON t.id = p.title_id'
            || CASE WHEN f_category IS NOT NULL THEN ' AND t.category = $6' ELSE '' END
            || CASE WHEN f_language IS NOT NULL THEN ' AND t.language = $7' ELSE '' END
            || CASE WHEN f_year_min IS NOT NULL THEN ' AND t.year >= $8' ELSE '' END
            || CASE WHEN f_year_max IS NOT NULL THEN ' AND t.year <= $9' ELSE '' END
            || CASE WHEN f_duration_min IS NOT NULL THEN ' AND t.duration_s >= $10' ELSE '' END
            || CASE WHEN f_duration_max IS NOT NULL THEN ' AND t.duration_s <= $11' ELSE '' END;
    END IF;
    read_first := 'SELECT array_agg(p.title_id ORDER BY p.impact DESC, p.title_id DESC), '
        || 'array_agg(p.impact ORDER BY p.impact DESC, p.title_id DESC), '
        || 'array_agg(' || passes || ' ORDER BY p.impact DESC, p.title_id DESC) '
        || 'FROM (SELECT title_id, impact FROM search_postings WHERE word = $1{after} '
        || 'ORDER BY impact DESC, title_id DESC LIMIT $4) p' || outer_join;
    read_after := replace(read_first, '{after}', ' AND (impact, title_id) < ($2, $3)');
    read_first := replace(read_first, '{after}', '');
    LOOP
        -- The list whose next posting could score the most (the first such), but another
        -- group's when it stands on a plateau (store._top_k).
        ci := 0;
        FOR i IN 1..nc LOOP
            IF NOT cex[i] THEN
                v := c_weight[i] * cf[i];
                IF ci = 0 OR v > best_v THEN
                    ci := i; best_v := v;
                END IF;
            END IF;
        END LOOP;
        EXIT WHEN ci = 0;
        IF cflat[ci] AND n_groups > 1 THEN
            alt := 0;
            FOR i IN 1..nc LOOP
                IF NOT cex[i] AND c_group[i] <> c_group[ci] THEN
                    v := c_weight[i] * cf[i];
                    IF alt = 0 OR v > best_v THEN
                        alt := i; best_v := v;
                    END IF;
                END IF;
            END LOOP;
            IF alt > 0 THEN
                cflat[ci] := false;
                ci := alt;
            END IF;
        END IF;
        g := c_group[ci];
        batch := cb[ci];
        cb[ci] := cb[ci] * 2;
        known := CASE WHEN sole[g + 1] = c_word[ci] THEN g END;
        before := cf[ci];
        IF c_word[ci] = '' THEN
            r_tid := m_title[m_pos[g + 1]:least(m_pos[g + 1] + batch - 1, m_end[g + 1])];
            r_imp := m_value[m_pos[g + 1]:least(m_pos[g + 1] + batch - 1, m_end[g + 1])];
            r_ok := array_fill(true, ARRAY[coalesce(cardinality(r_tid), 0)]);
            m_pos[g + 1] := m_pos[g + 1] + batch;
            cex[ci] := m_pos[g + 1] > m_end[g + 1];
            cf[ci] := CASE WHEN cex[ci] THEN 0.0 ELSE m_value[m_pos[g + 1]] END;
        ELSE
            IF outer_join <> '' THEN
                -- Joined filters: a statement made for them (planned each time).
                EXECUTE CASE WHEN ca_tid[ci] IS NULL THEN read_first ELSE read_after END
                    INTO r_tid, r_imp, r_ok
                    USING c_word[ci], ca_imp[ci], ca_tid[ci], batch, f_set, f_category, f_language,
                          f_year_min, f_year_max, f_duration_min, f_duration_max;
            ELSIF ca_tid[ci] IS NULL THEN
                -- No filter, or a set of titles: statements whose plans are kept (a batch of the
                -- impact index in order, whatever the values).
                SELECT array_agg(p.title_id ORDER BY p.impact DESC, p.title_id DESC),
                       array_agg(p.impact ORDER BY p.impact DESC, p.title_id DESC),
                       array_agg(f_set IS NULL OR p.title_id IN (SELECT unnest(f_set))
                                 ORDER BY p.impact DESC, p.title_id DESC)
                    INTO r_tid, r_imp, r_ok
                    FROM (SELECT sp.title_id, sp.impact FROM search_postings sp WHERE sp.word = c_word[ci]
                          ORDER BY sp.impact DESC, sp.title_id DESC LIMIT batch) p;
            ELSE
                SELECT array_agg(p.title_id ORDER BY p.impact DESC, p.title_id DESC),
                       array_agg(p.impact ORDER BY p.impact DESC, p.title_id DESC),
                       array_agg(f_set IS NULL OR p.title_id IN (SELECT unnest(f_set))
                                 ORDER BY p.impact DESC, p.title_id DESC)
                    INTO r_tid, r_imp, r_ok
                    FROM (SELECT sp.title_id, sp.impact FROM search_postings sp
                          WHERE sp.word = c_word[ci] AND (sp.impact, sp.title_id) < (ca_imp[ci], ca_tid[ci])
                          ORDER BY sp.impact DESC, sp.title_id DESC LIMIT batch) p;
            END IF;
            n_read := coalesce(cardinality(r_tid), 0);
            walked := walked + n_read;
            IF n_read < batch THEN
                cex[ci] := true; cf[ci] := 0.0;
            END IF;
            IF n_read > 0 THEN
                ca_imp[ci] := r_imp[n_read]; ca_tid[ci] := r_tid[n_read];
                IF NOT cex[ci] THEN
                    cf[ci] := r_imp[n_read];
                END IF;
            END IF;
        END IF;
        cflat[ci] := cf[ci] = before;
        -- Each group's bound: the most its lists can still hold (a one-letter prefix's
        -- unwalked completions: its peak).
        bounds := '{}';
        total_b := 0.0;
        min_b := NULL;
        FOR gi IN 0..n_groups - 1 LOOP
            v := 0.0;
            FOR i IN 1..nc LOOP
                IF c_group[i] = gi AND c_weight[i] * cf[i] > v THEN
                    v := c_weight[i] * cf[i];
                END IF;
            END LOOP;
            IF partial[gi + 1] AND n_groups > 1 AND peaks[gi + 1] > v THEN
                v := peaks[gi + 1];
            END IF;
            bounds := bounds || v;
            total_b := total_b + v;
            IF min_b IS NULL OR v < min_b THEN
                min_b := v;
            END IF;
        END LOOP;
        others := total_b - bounds[g + 1];
        own := bounds[g + 1];
        floor_v := CASE WHEN kth IS NULL THEN -1.0 ELSE kth - eps END;
        -- The batch's titles not seen before (all of them now seen), and of those the ones
        -- whose bound reaches the k-th score (fresh), with their weighted impact in this list.
        SELECT array_agg(u.t), array_agg(u.t) FILTER (WHERE greatest(c_weight[ci] * u.imp, own) + others >= floor_v),
               array_agg(c_weight[ci] * u.imp) FILTER (WHERE greatest(c_weight[ci] * u.imp, own) + others >= floor_v)
            INTO n_tid, f_tid, f_v
            FROM unnest(r_tid, r_imp, r_ok) u(t, imp, ok)
            WHERE u.ok AND NOT EXISTS (SELECT 1 FROM unnest(seen) s(x) WHERE s.x = u.t);
        IF n_tid IS NOT NULL THEN
            seen := seen || n_tid;
        END IF;
        IF f_tid IS NOT NULL THEN
            lw := ARRAY(SELECT DISTINCT l.w FROM unnest(l_word, l_group) l(w, g) WHERE l.g IS DISTINCT FROM known);
            IF cardinality(lw) = 0 THEN
                IF n_groups = 1 THEN
                    found_t := f_tid; found_s := f_v;
                ELSE
                    found_t := NULL; found_s := NULL;
                END IF;
            ELSE
                -- One primary-key probe per title, or the words' whole lists hashed against the
                -- titles when they hold fewer than scan_ratio postings a title (store._lookup_join).
                SELECT sum(x.n) INTO listed FROM (SELECT DISTINCT ON (l.w) l.w, l.n FROM unnest(l_word, l_length) l(w, n)
                                                   WHERE l.w = ANY(lw)) x;
                IF listed < scan_ratio * batch THEN
                    EXECUTE 'WITH f AS (SELECT * FROM unnest($1, $2) f(t, v)), q AS MATERIALIZED ('
                        'SELECT q.title_id, q.word, q.impact FROM (SELECT title_id, word, impact FROM search_postings '
                        'WHERE word = ANY($3) OFFSET 0) q WHERE q.title_id IN (SELECT t FROM f)), '
                        'gv AS (SELECT x.t, x.g, max(x.v) AS v FROM (SELECT q.title_id AS t, l.g, l.w * q.impact AS v '
                        'FROM q JOIN unnest($4, $5, $6) l(word, g, w) ON l.word = q.word '
                        'UNION ALL SELECT f.t, $7, f.v FROM f WHERE $7 IS NOT NULL) x GROUP BY 1, 2) '
                        'SELECT array_agg(t), array_agg(s) FROM (SELECT t, sum(v ORDER BY g) AS s FROM gv WHERE v > 0 '
                        'GROUP BY t HAVING count(*) = $8) x'
                        INTO found_t, found_s
                        USING f_tid, f_v, lw, l_word, l_group, l_weight, known, n_groups;
                ELSE
                    -- The probes (a plan kept: one index-only probe per title whatever the values).
                    SELECT array_agg(y.t), array_agg(y.s) INTO found_t, found_s
                        FROM (SELECT gv.t, sum(gv.v ORDER BY gv.g) AS s
                              FROM (SELECT x.t, x.g, max(x.v) AS v
                                    FROM (SELECT q.title_id AS t, l.g, l.w * q.impact AS v
                                          FROM unnest(f_tid) f(t)
                                          CROSS JOIN LATERAL (SELECT sp.title_id, sp.word, sp.impact FROM search_postings sp
                                                              WHERE sp.title_id = f.t AND sp.word = ANY(lw) OFFSET 0) q
                                          JOIN unnest(l_word, l_group, l_weight) l(word, g, w) ON l.word = q.word
                                          UNION ALL
                                          SELECT f.t, known, f.v FROM unnest(f_tid, f_v) f(t, v) WHERE known IS NOT NULL) x
                                    GROUP BY 1, 2) gv
                              WHERE gv.v > 0 GROUP BY gv.t HAVING count(*) = n_groups) y;
                END IF;
            END IF;
            IF found_t IS NOT NULL THEN
                s_tid := s_tid || found_t;
                s_score := s_score || found_s;
                IF cardinality(s_score) >= k THEN
                    SELECT x INTO kth FROM unnest(s_score) x ORDER BY x DESC OFFSET k - 1 LIMIT 1;
                END IF;
            END IF;
        END IF;
        EXIT WHEN min_b <= 0.0 OR (kth IS NOT NULL AND kth - eps > total_b) OR walked >= max_walk + 2 * k;
    END LOOP;
    IF cardinality(s_score) < k THEN
        RETURN QUERY SELECT x.t, x.s FROM unnest(s_tid, s_score) x(t, s) ORDER BY x.s DESC, x.t DESC;
    ELSE
        RETURN QUERY SELECT x.t, x.s FROM unnest(s_tid, s_score) x(t, s) WHERE x.s >= kth
            ORDER BY x.s DESC, x.t DESC LIMIT k;
    END IF;
END
$walk$
"""
