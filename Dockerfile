# The postprocessing agent, for docker-compose.yml (see docs/operations.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY postprocessing ./postprocessing
RUN pip install --no-cache-dir ".[metrics]" \
    && useradd --system --uid 1000 --home-dir /var/log/postprocessing --shell /usr/sbin/nologin autoreduce \
    && install -d -o autoreduce -g autoreduce /var/log/postprocessing /var/lib/postprocessing /output

USER autoreduce
ENV POSTPROCESSING_CONFIG=/etc/autoreduce/post_processing.conf
EXPOSE 9100
CMD ["postprocessing", "run"]
