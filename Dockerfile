# Worker/producer image: onnxruntime and friends only, no torch. The model is built outside
# (`imgbatch export`) and mounted at /models; a later stage of the project builds it in an export stage.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY imgbatch ./imgbatch
COPY worker ./worker
COPY producer ./producer
COPY db ./db
COPY export ./export
RUN pip install --no-cache-dir . && useradd --create-home imgbatch
USER imgbatch
ENV IMGBATCH_DATA_DIR=/home/imgbatch/data \
    IMGBATCH_MODEL=/models/efficientnet_lite0.int8.onnx
ENTRYPOINT ["imgbatch"]
CMD ["worker"]
