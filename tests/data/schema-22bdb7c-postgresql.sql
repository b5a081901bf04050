-- The PostgreSQL schema that the code of commit 22bdb7c (the last release before schema
-- versions) created: pg_dump --schema-only --no-owner --no-privileges of a database it
-- made, psql meta-commands removed. tests/test_migrations.py builds the old database from it.
--
-- PostgreSQL database dump
--


-- Dumped from database version 15.18 (Debian 15.18-0+deb12u1)
-- Dumped by pg_dump version 15.18 (Debian 15.18-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: customer_count_change(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.customer_count_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                UPDATE organization SET customer_count = customer_count + 1
                WHERE id = NEW.organization_id;
            ELSE
                UPDATE organization SET customer_count = customer_count - 1
                WHERE id = OLD.organization_id;
            END IF;
            RETURN NULL;
        END $$;


SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: api_key; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.api_key (
    id integer NOT NULL,
    organization_id integer NOT NULL,
    prefix character varying(32) NOT NULL,
    key_hash character varying(64) NOT NULL,
    created_at timestamp without time zone NOT NULL,
    revoked_at timestamp without time zone
);


--
-- Name: api_key_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.api_key_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: api_key_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.api_key_id_seq OWNED BY public.api_key.id;


--
-- Name: customer; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.customer (
    id integer NOT NULL,
    lago_id uuid NOT NULL,
    organization_id integer NOT NULL,
    customer_id character varying(255) NOT NULL,
    name character varying(255) NOT NULL,
    address_line1 character varying(255),
    address_line2 character varying(255),
    city character varying(255),
    country character varying(2),
    email character varying(255),
    legal_name character varying(255),
    legal_number character varying(255),
    logo_url character varying(2048),
    phone character varying(255),
    state character varying(255),
    url character varying(2048),
    zipcode character varying(255),
    created_at timestamp without time zone NOT NULL,
    updated_at timestamp without time zone NOT NULL
);


--
-- Name: customer_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.customer_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: customer_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.customer_id_seq OWNED BY public.customer.id;


--
-- Name: organization; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.organization (
    id integer NOT NULL,
    name character varying(255) NOT NULL,
    created_at timestamp without time zone NOT NULL,
    customer_count integer DEFAULT 0 NOT NULL
);


--
-- Name: organization_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.organization_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: organization_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.organization_id_seq OWNED BY public.organization.id;


--
-- Name: api_key id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_key ALTER COLUMN id SET DEFAULT nextval('public.api_key_id_seq'::regclass);


--
-- Name: customer id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.customer ALTER COLUMN id SET DEFAULT nextval('public.customer_id_seq'::regclass);


--
-- Name: organization id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.organization ALTER COLUMN id SET DEFAULT nextval('public.organization_id_seq'::regclass);


--
-- Name: api_key api_key_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_key
    ADD CONSTRAINT api_key_pkey PRIMARY KEY (id);


--
-- Name: customer customer_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.customer
    ADD CONSTRAINT customer_pkey PRIMARY KEY (id);


--
-- Name: organization organization_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.organization
    ADD CONSTRAINT organization_pkey PRIMARY KEY (id);


--
-- Name: api_key_organization_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX api_key_organization_id ON public.api_key USING btree (organization_id);


--
-- Name: api_key_prefix; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX api_key_prefix ON public.api_key USING btree (prefix);


--
-- Name: customer_lago_id; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX customer_lago_id ON public.customer USING btree (lago_id);


--
-- Name: customer_organization_id_created_at_lago_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX customer_organization_id_created_at_lago_id ON public.customer USING btree (organization_id, created_at DESC, lago_id);


--
-- Name: customer_organization_id_customer_id; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX customer_organization_id_customer_id ON public.customer USING btree (organization_id, customer_id);


--
-- Name: organization_name; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX organization_name ON public.organization USING btree (name);


--
-- Name: customer customer_counted; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER customer_counted AFTER INSERT OR DELETE ON public.customer FOR EACH ROW EXECUTE FUNCTION public.customer_count_change();


--
-- Name: api_key api_key_organization_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_key
    ADD CONSTRAINT api_key_organization_id_fkey FOREIGN KEY (organization_id) REFERENCES public.organization(id) ON DELETE CASCADE;


--
-- Name: customer customer_organization_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.customer
    ADD CONSTRAINT customer_organization_id_fkey FOREIGN KEY (organization_id) REFERENCES public.organization(id) ON DELETE CASCADE;


--
-- PostgreSQL database dump complete
--


