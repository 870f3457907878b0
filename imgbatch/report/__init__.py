"""`imgbatch report`: one self-contained HTML file showing what a job found, doubted, failed on and
where its time went. Aggregates come from `db.stats`; charts are matplotlib SVG; thumbnails are
decoded with the workers' `open_image`. Heavy imports happen only when a report is built."""
